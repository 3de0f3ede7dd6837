#!/usr/bin/env bash
# Prove jailbuilder on a real FreeBSD kernel: boot the VM, run the FreeBSD
# tests as root, run the bench against pot, copy the results to the host.
#
# usage: vagrant/run.sh [virtualbox|libvirt] [--destroy] [--skip-tests] [--skip-bench]
#   provider: first argument, else $VAGRANT_PROVIDER, else virtualbox
#   --destroy     destroy the VM at the end (also on failure)
#   --skip-tests  only run the bench
#   --skip-bench  only run the tests
#
# exit status: 0 all passed; 1 tests failed; 2 tests passed, bench failed;
#              3 the VM could not be brought up or provisioned.
set -euo pipefail

# The bench command line, in one place (flags: `jailbuilder bench --help`;
# pot's fs root and template come from JAILBUILDER_POT_FS_ROOT and
# JAILBUILDER_POT_TEMPLATE in the provisioned env). Paths are inside the VM;
# the files they name are copied to the host results directory.
BENCH_JSON=/tmp/jailbuilder-bench.json
BENCH_SVG=/tmp/jailbuilder-bench.svg
# shellcheck disable=SC2054 # the comma is part of the value
BENCH_ARGS=(bench --strategies native,cli,bare --json "$BENCH_JSON" --plot "$BENCH_SVG")

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$HERE"

PROVIDER=${VAGRANT_PROVIDER:-virtualbox}
DESTROY=0
SKIP_TESTS=0
SKIP_BENCH=0
for arg in "$@"; do
	case "$arg" in
	virtualbox | libvirt) PROVIDER=$arg ;;
	--destroy) DESTROY=1 ;;
	--skip-tests) SKIP_TESTS=1 ;;
	--skip-bench) SKIP_BENCH=1 ;;
	-h | --help)
		sed -n '2,13p' "${BASH_SOURCE[0]}"
		exit 0
		;;
	*)
		echo "run.sh: unknown argument: $arg" >&2
		exit 64
		;;
	esac
done

# Vagrant < 2.3 only attaches config.vm.disk disks with this flag.
export VAGRANT_EXPERIMENTAL=${VAGRANT_EXPERIMENTAL:-disks}

RESULTS="$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)-$PROVIDER"
mkdir -p "$RESULTS"
SSH_CONFIG="$RESULTS/ssh-config"

declare -a PHASES=()
phase_start=0
phase() { # phase NAME: start timing a phase
	phase_name=$1
	phase_start=$SECONDS
	printf '\n=== %s\n' "$phase_name"
}
phase_end() { # phase_end STATUS
	local secs=$((SECONDS - phase_start))
	PHASES+=("$(printf '%-28s %6ds  %s' "$phase_name" "$secs" "$1")")
	printf '=== %s: %s in %ds\n' "$phase_name" "$1" "$secs"
}
summary() {
	{
		echo "provider: $PROVIDER"
		printf '%s\n' "${PHASES[@]}"
		printf '%-28s %6ds\n' total "$SECONDS"
	} | tee "$RESULTS/timings.txt"
	echo "results: $RESULTS"
}
finish() {
	local rc=$1
	if [[ $DESTROY == 1 ]]; then
		phase "vagrant destroy"
		if vagrant destroy -f; then phase_end ok; else phase_end failed; fi
	fi
	echo
	summary
	exit "$rc"
}

# Run a root shell script inside the VM, script on stdin. Plain ssh with the
# config from `vagrant ssh-config`: `vagrant ssh -c` would hand the command to
# the vagrant user's login shell, csh.
vm_root_sh() {
	ssh -F "$SSH_CONFIG" -o LogLevel=ERROR default 'sudo /bin/sh -s'
}
vm_cat() { # vm_cat PATH > host-file
	ssh -F "$SSH_CONFIG" -o LogLevel=ERROR default "sudo cat '$1'"
}
refresh_ssh_config() {
	vagrant ssh-config >"$SSH_CONFIG"
}

# ------------------------------------------------------------------ up
phase "vagrant up ($PROVIDER)"
# --provision: provision.sh is idempotent, so a re-run on an existing VM only
# checks; it also re-imports the pool after a reboot.
if vagrant up --provider "$PROVIDER" --provision; then
	phase_end ok
else
	phase_end failed
	finish 3
fi

phase "sync sources"
# `vagrant up` on a VM that was already running does not rsync: do it here.
if vagrant rsync && refresh_ssh_config; then phase_end ok; else phase_end failed; finish 3; fi

# ------------------------------------------------------------------ RACCT
phase "enable RACCT (reboot)"
racct=$(vm_root_sh <<<'sysctl -n kern.racct.enable' || echo "?")
if [[ $racct == 1 ]]; then
	phase_end "already on"
else
	# kern.racct.enable is a loader tunable: provision.sh wrote it to
	# /boot/loader.conf; it takes a reboot. Re-provision afterwards so a
	# file-backed pool is re-imported if the boot did not import it.
	if vagrant reload --provision && refresh_ssh_config &&
		[[ $(vm_root_sh <<<'sysctl -n kern.racct.enable') == 1 ]]; then
		phase_end ok
	else
		phase_end failed
		finish 3
	fi
fi

vm_cat /var/db/jailbuilder/env >"$RESULTS/env" || finish 3
echo "environment handed to the tests and the bench:"
sed 's/^/    /' "$RESULTS/env"

# Common prologue of the in-VM scripts: the provisioned environment, a
# PATH with the packaged rust, and a target dir outside the synced tree
# (so `vagrant rsync --delete` never fights root-owned build output).
read -r -d '' PROLOGUE <<'EOF' || true
set -eu
set -a
. /var/db/jailbuilder/env
set +a
export PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin
# On the test pool's build dataset (provision.sh): the box's root disk is 8 GB.
export CARGO_TARGET_DIR="$JB_BUILD_DIR/target" CARGO_HOME="$JB_BUILD_DIR/cargo"
export CARGO_TERM_COLOR=never
export RUST_BACKTRACE=1
mkdir -p "$CARGO_TARGET_DIR" "$CARGO_HOME"
cd "$JB_SRC"
EOF

# ------------------------------------------------------------------ tests
TESTS_RC=0
if [[ $SKIP_TESTS == 0 ]]; then
	phase "build tests"
	if vm_root_sh <<EOF 2>&1 | tee "$RESULTS/build-tests.log"; then
$PROLOGUE
cargo --version
rustc --version
cargo test --workspace --no-run
EOF
		phase_end ok
	else
		phase_end failed
		TESTS_RC=1
	fi

	if [[ $TESTS_RC == 0 ]]; then
		phase "cargo test (as root)"
		# All tests, unit and integration: on FreeBSD, tests/freebsd_*.rs
		# run against the real kernel using the JAILBUILDER_* variables.
		# JAILBUILDER_FREEBSD_REQUIRED=1: here a FreeBSD test that cannot run
		# (not root, a variable missing) fails instead of printing SKIP. Not
		# JAILBUILDER_CI=1: sys/'s header check would then fail for want of the
		# OpenZFS headers, which FreeBSD base does not install.
		if vm_root_sh <<EOF 2>&1 | tee "$RESULTS/test.log"; then
$PROLOGUE
ls tests/freebsd_*.rs 2>/dev/null || echo "WARNING: no tests/freebsd_*.rs in the tree"
export JAILBUILDER_FREEBSD_REQUIRED=1
cargo test --workspace -- --test-threads=1
EOF
			phase_end passed
		else
			phase_end FAILED
			TESTS_RC=1
		fi
	fi
fi

# ------------------------------------------------------------------ bench
BENCH_RC=0
if [[ $SKIP_BENCH == 0 ]]; then
	phase "build release"
	if vm_root_sh <<EOF 2>&1 | tee "$RESULTS/build-release.log"; then
$PROLOGUE
cargo build --release
EOF
		phase_end ok
	else
		phase_end failed
		BENCH_RC=1
	fi

	if [[ $BENCH_RC == 0 ]]; then
		phase "bench (native vs pot CLI)"
		bench_cmd=$(printf '%q ' "${BENCH_ARGS[@]}")
		if vm_root_sh <<EOF 2>&1 | tee "$RESULTS/bench.log"; then
$PROLOGUE
rm -f $BENCH_JSON $BENCH_SVG
cargo run --release -- $bench_cmd
EOF
			phase_end ok
		else
			phase_end failed
			BENCH_RC=1
		fi
		phase "copy results"
		copied=ok
		vm_cat "$BENCH_JSON" >"$RESULTS/bench.json" || { rm -f "$RESULTS/bench.json"; copied=partial; }
		vm_cat "$BENCH_SVG" >"$RESULTS/bench.svg" || { rm -f "$RESULTS/bench.svg"; copied=partial; }
		phase_end "$copied"
	fi
fi

# The VM's view, for the record.
vm_root_sh <<'EOF' >"$RESULTS/vm-info.txt" 2>&1 || true
uname -a
freebsd-version -kru
sysctl kern.racct.enable hw.ncpu hw.physmem
zpool list
zfs list -r -o name,used,mountpoint
devfs rule -s 4 show
pot version
pot ls
EOF

if [[ $TESTS_RC != 0 ]]; then
	finish 1
elif [[ $BENCH_RC != 0 ]]; then
	finish 2
fi
finish 0
