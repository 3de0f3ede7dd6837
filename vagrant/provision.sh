#!/bin/sh
# Provision a FreeBSD 14.x VM for jailbuilder's FreeBSD tests and its bench
# against pot. POSIX sh, run as root, idempotent: every step checks before it
# acts, so `vagrant provision` can be re-run at any time (run.sh does, after
# the reboot that turns RACCT on).
#
# Inputs (environment; all optional):
#   JB_FREEBSD_RELEASE   release of the jail base, e.g. 14.3 or 14.3-RELEASE.
#                        Default: the running kernel's release (uname -r minus
#                        -pN), so the jail userland is never newer than the
#                        kernel.
#   JB_POOL              pool name                        (default jbpool)
#   JB_POOL_DEVICE       disk for the pool, e.g. ada1 / vtbd1 / da1
#                        (default: the first disk with no partition table
#                        and not in a pool; if none, a file-backed pool)
#   JB_POOL_FILE_SIZE    size of the file vdev if no spare disk (default 20G)
#   JAILBUILDER_BUILD_UID  first uid/gid of the per-slot build range (default 1879048192)
#   JB_SRC               where the repo is synced  (default /home/vagrant/jailbuilder)
#
# Output: /var/db/jailbuilder/env, a file of VAR=value lines that run.sh
# sources before `cargo test` and the bench (see README.md).

set -eu

log() { printf '==> provision: %s\n' "$*"; }
warn() { printf '==> provision: WARNING: %s\n' "$*" >&2; }
die() { printf '==> provision: ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

POOL=${JB_POOL:-jbpool}
POOL_FILE_DIR=/var/jailbuilder
POOL_FILE="$POOL_FILE_DIR/pool.img"
POOL_FILE_SIZE=${JB_POOL_FILE_SIZE:-20G}
BUILD_UID=${JAILBUILDER_BUILD_UID:-1879048192}
JB_ROOT="$POOL/jailbuilder"
BASE_DS="$JB_ROOT/base"
TEST_DS="$JB_ROOT/test"
POT_ZFS_ROOT="$POOL/pot"
POT_FS_ROOT=/opt/pot
POT_TEMPLATE=sccache-template
ENV_DIR=/var/db/jailbuilder
ENV_FILE="$ENV_DIR/env"

export ASSUME_ALWAYS_YES=yes

# ---------------------------------------------------------------- release
kernel_rel=$(uname -r)            # e.g. 14.3-RELEASE-p2
kernel_rel=${kernel_rel%%-p*}     # 14.3-RELEASE
if [ -n "${JB_FREEBSD_RELEASE:-}" ]; then
	case "$JB_FREEBSD_RELEASE" in
	*-*) REL=$JB_FREEBSD_RELEASE ;;
	*) REL="$JB_FREEBSD_RELEASE-RELEASE" ;;
	esac
	if [ "$REL" != "$kernel_rel" ]; then
		warn "jail base $REL differs from the running kernel $kernel_rel"
		warn "a jail userland newer than the kernel is unsupported"
	fi
else
	REL=$kernel_rel
fi
POT_REL=${REL%-RELEASE}           # pot names releases 14.3, not 14.3-RELEASE
ARCH_M=$(uname -m)                # amd64
ARCH_P=$(uname -p)                # amd64
log "FreeBSD kernel $(uname -r), jail base $REL ($ARCH_M/$ARCH_P)"

# ---------------------------------------------------------------- packages
if ! pkg -N >/dev/null 2>&1; then
	log "bootstrapping pkg"
	pkg bootstrap -y
fi
# rust: cargo + rustc. pot: pulls potnet, nmap (ncat) and
# freebsd-release-manifests (its port's RUN_DEPENDS). sccache: for reference
# and the client side. git: for cargo git deps. rsync: Vagrant's rsync sync.
PKGS="rust pot sccache git rsync freebsd-release-manifests"
missing=
for p in $PKGS; do
	pkg info -e "$p" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	log "installing:$missing"
	pkg update
	# shellcheck disable=SC2086
	pkg install -y $missing
fi
if ! pkg info -l sccache 2>/dev/null | grep -q 'bin/sccache-dist$'; then
	warn "the sccache package has no sccache-dist; pot is compared through the pot CLI, not through sccache-dist"
fi

# ---------------------------------------------------------------- ZFS
kldload -n zfs
sysrc zfs_enable=YES >/dev/null
if ! grep -q '^zfs_load=' /boot/loader.conf 2>/dev/null; then
	echo 'zfs_load="YES"' >>/boot/loader.conf
fi

pool_candidate_disk() {
	for d in $(sysctl -n kern.disks); do
		case "$d" in cd*) continue ;; esac
		# a partition table means the disk is in use (the root disk has one)
		gpart show "$d" >/dev/null 2>&1 && continue
		# a whole-disk vdev of an existing pool
		zpool status 2>/dev/null | grep -qw "$d" && continue
		# mounted directly (no partition table)
		mount | grep -q "^/dev/$d " && continue
		echo "$d"
		return 0
	done
	return 1
}

if zpool list -H -o name "$POOL" >/dev/null 2>&1; then
	log "pool $POOL is imported"
elif zpool import "$POOL" >/dev/null 2>&1 ||
	{ [ -d "$POOL_FILE_DIR" ] && zpool import -d "$POOL_FILE_DIR" "$POOL" >/dev/null 2>&1; }; then
	log "pool $POOL re-imported"
else
	dev=${JB_POOL_DEVICE:-}
	if [ -z "$dev" ]; then
		dev=$(pool_candidate_disk) || dev=
	fi
	if [ -n "$dev" ]; then
		log "creating pool $POOL on /dev/$dev"
		zpool create -O compression=lz4 -O atime=off "$POOL" "/dev/$dev"
	else
		log "no spare disk: creating a file-backed pool $POOL ($POOL_FILE, $POOL_FILE_SIZE sparse)"
		mkdir -p "$POOL_FILE_DIR"
		[ -e "$POOL_FILE" ] || truncate -s "$POOL_FILE_SIZE" "$POOL_FILE"
		# a file vdev must be an absolute path (zpoolconcepts(7))
		zpool create -O compression=lz4 -O atime=off "$POOL" "$POOL_FILE"
	fi
fi
zpool list "$POOL"

# datasets: the jailbuilder root, the base image, the tests' scratch root, and the build
# area (cargo's target dir and home): the release box's root disk is 8 GB
# (release/tools/vagrant.conf VMSIZE=8g), too small for Rust, two base.txz and debug +
# release builds, so they live on the test pool.
BUILD_DS="$POOL/build"
for ds in "$JB_ROOT" "$BASE_DS" "$TEST_DS" "$BUILD_DS"; do
	zfs list -H -o name "$ds" >/dev/null 2>&1 || zfs create -p "$ds"
done
BUILD_DIR=$(zfs list -H -o mountpoint "$BUILD_DS")
BASE_SNAP="$BASE_DS@$REL"
BASE_MNT=$(zfs list -H -o mountpoint "$BASE_DS")

# ---------------------------------------------------------------- base.txz
DIST_DIR=/var/cache/jailbuilder
BASE_TXZ="$DIST_DIR/$REL-base.txz"
MANIFEST="/usr/local/share/freebsd/MANIFESTS/$ARCH_M-$ARCH_P-$REL"

verify_base_txz() {
	# $1: file. Succeeds if its sha256 matches the release MANIFEST.
	if [ ! -r "$MANIFEST" ]; then
		fetch -q -o "$DIST_DIR/MANIFEST-$REL" \
			"https://download.freebsd.org/releases/$ARCH_M/$ARCH_P/$REL/MANIFEST" ||
			return 1
		MANIFEST="$DIST_DIR/MANIFEST-$REL"
	fi
	want=$(awk '$1 == "base.txz" { print $2 }' "$MANIFEST")
	have=$(sha256 -q "$1")
	[ -n "$want" ] && [ "$want" = "$have" ]
}

if ! zfs list -H -t snapshot -o name "$BASE_SNAP" >/dev/null 2>&1; then
	mkdir -p "$DIST_DIR"
	if [ ! -r "$BASE_TXZ" ] || ! verify_base_txz "$BASE_TXZ"; then
		rm -f "$BASE_TXZ"
		for url in \
			"https://download.freebsd.org/releases/$ARCH_M/$ARCH_P/$REL/base.txz" \
			"https://ftp.freebsd.org/pub/FreeBSD/releases/$ARCH_M/$ARCH_P/$REL/base.txz"; do
			log "fetching $url"
			if fetch -o "$BASE_TXZ.part" "$url"; then
				mv "$BASE_TXZ.part" "$BASE_TXZ"
				break
			fi
		done
		[ -r "$BASE_TXZ" ] || die "could not fetch base.txz for $REL"
		verify_base_txz "$BASE_TXZ" || die "base.txz sha256 does not match the $REL MANIFEST"
	fi
	log "extracting base.txz into $BASE_MNT"
	# a half-extracted tree from an interrupted run is rolled forward: tar
	# overwrites; flags (schg) must be cleared first or tar cannot replace files
	chflags -R noschg "$BASE_MNT" 2>/dev/null || true
	tar -xpf "$BASE_TXZ" -C "$BASE_MNT"
	# the jails get no network, but name lookups of localhost must not hang
	[ -e "$BASE_MNT/etc/resolv.conf" ] || : >"$BASE_MNT/etc/resolv.conf"
	zfs snapshot "$BASE_SNAP"
	log "snapshot $BASE_SNAP"
else
	log "snapshot $BASE_SNAP exists"
fi

# ---------------------------------------------------------------- devfs
# devfsrules_jail (ruleset 4) lives in /etc/defaults/devfs.rules; rc.d/devfs
# loads the rulesets at boot when devfs_load_rulesets=YES (the default).
sysrc devfs_load_rulesets=YES >/dev/null
if [ -z "$(devfs rule -s 4 show 2>/dev/null)" ]; then
	log "loading devfs rulesets"
	service devfs restart
fi
[ -n "$(devfs rule -s 4 show 2>/dev/null)" ] || die "devfs ruleset 4 (devfsrules_jail) is not loaded"

# ---------------------------------------------------------------- RACCT/RCTL
# kern.racct.enable is a loader tunable: it takes effect after a reboot.
# sysrc cannot write dotted names, so the line is appended by hand.
if ! grep -q '^kern\.racct\.enable=' /boot/loader.conf 2>/dev/null; then
	echo 'kern.racct.enable="1"' >>/boot/loader.conf
fi
sysrc rctl_enable=YES >/dev/null
RACCT_NOW=$(sysctl -n kern.racct.enable 2>/dev/null || echo 0)
if [ "$RACCT_NOW" != 1 ]; then
	warn "kern.racct.enable=0 until the next boot (run.sh reboots the VM once)"
fi

# ---------------------------------------------------------------- build ids
# Each container slot runs its builds as its own uid/gid, BUILD_UID + slot (config keys
# build_uid_base/build_gid_base): no account is needed, and none may use the range
# (`jailbuilder doctor` checks the passwd and group files).
if awk -F: -v lo="$BUILD_UID" -v hi="$((BUILD_UID + 4096))" '$3 >= lo && $3 < hi { found = 1 } END { exit !found }' /etc/passwd /etc/group; then
	die "an account or group uses an id in $BUILD_UID..$((BUILD_UID + 4095)), the build id range"
fi

# ---------------------------------------------------------------- pot
# As sccache's docs/DistributedFreeBSD.md: pot on the pool, then the
# sccache-template pot, cloned per container by sccache's PotBuilder (and by
# `jailbuilder bench --strategies cli`).
EXTIF=$(route -n get default 2>/dev/null | awk '/interface:/ { print $2; exit }')
[ -n "$EXTIF" ] || EXTIF=$(ifconfig -l | awk '{ for (i = 1; i <= NF; i++) if ($i !~ /^lo/) { print $i; exit } }')
POT_CONF=/usr/local/etc/pot/pot.conf
want_conf=$(printf '%s\n' \
	"# written by jailbuilder vagrant/provision.sh" \
	"POT_ZFS_ROOT=$POT_ZFS_ROOT" \
	"POT_FS_ROOT=$POT_FS_ROOT" \
	"POT_EXTIF=$EXTIF")
if [ ! -r "$POT_CONF" ] || [ "$(cat "$POT_CONF")" != "$want_conf" ]; then
	log "writing $POT_CONF (POT_EXTIF=$EXTIF)"
	printf '%s\n' "$want_conf" >"$POT_CONF"
fi
if ! zfs list -H -o name "$POT_ZFS_ROOT/jails" >/dev/null 2>&1; then
	log "pot init"
	# -f '' skips editing pf.conf (no pf here); older pot has no -f
	if pot init -h 2>&1 | grep -q -- '-f pf_file'; then
		pot init -f ''
	else
		pot init
	fi
fi
if [ ! -d "$POT_FS_ROOT/jails/$POT_TEMPLATE" ]; then
	# pot fetches <REL>_base.txz (e.g. 14.3-RELEASE_base.txz) itself unless it is there
	# and matches the MANIFEST: current pot looks in ${POT_CACHE} (share/pot/common.sh;
	# pot.default.conf, default /var/cache/pot), older pot in /tmp. Hand both the tarball
	# we already verified.
	POT_CACHE=$( . /usr/local/etc/pot/pot.default.conf 2>/dev/null; echo "${POT_CACHE:-/var/cache/pot}")
	mkdir -p "$POT_CACHE"
	for d in "$POT_CACHE" /tmp; do
		[ -r "$d/${REL}_base.txz" ] || cp "$BASE_TXZ" "$d/${REL}_base.txz"
	done
	log "pot create -p $POT_TEMPLATE -b $POT_REL"
	pot create -p "$POT_TEMPLATE" -N alias -i "lo0|127.0.0.2" -t single -b "$POT_REL"
	pot set-cmd -p "$POT_TEMPLATE" -c /usr/bin/true
	pot set-attr -p "$POT_TEMPLATE" -A no-rc-script -V YES
	pot snapshot -p "$POT_TEMPLATE"
else
	log "pot $POT_TEMPLATE exists"
fi

# ---------------------------------------------------------------- env file
mkdir -p "$ENV_DIR"
cat >"$ENV_FILE.new" <<EOF
JAILBUILDER_ZFS_ROOT=$TEST_DS
JAILBUILDER_BASE_SNAPSHOT=$BASE_SNAP
JAILBUILDER_BUILD_UID=$BUILD_UID
JAILBUILDER_POT_FS_ROOT=$POT_FS_ROOT
JAILBUILDER_POT_TEMPLATE=$POT_TEMPLATE
JB_FREEBSD_RELEASE=$REL
JB_SRC=${JB_SRC:-/home/vagrant/jailbuilder}
JB_BUILD_DIR=$BUILD_DIR
EOF
mv "$ENV_FILE.new" "$ENV_FILE"
log "wrote $ENV_FILE:"
sed 's/^/    /' "$ENV_FILE"
log "done"
