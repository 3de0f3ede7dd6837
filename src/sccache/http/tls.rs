//! The build server's TLS certificate: a fresh self-signed one per start, exactly as
//! sccache 0.19's `create_https_cert_and_privkey` (src/dist/http.rs) makes it. The
//! scheduler receives its PEM and SHA-256 digest in every heartbeat and hands them to
//! clients, which trust this one certificate for this server.

use std::net::SocketAddr;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{SslAcceptor, SslMethod};
use openssl::x509::extension::{ExtendedKeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Name, X509};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("creating the self-signed certificate for {addr}")]
    Certificate {
        addr: SocketAddr,
        #[source]
        source: ErrorStack,
    },
    #[error("setting up the TLS acceptor")]
    Acceptor(#[source] ErrorStack),
}

/// The certificate and its key.
pub struct Cert {
    /// SHA-256 of the DER certificate: the scheduler's and clients' key for it.
    pub digest: Vec<u8>,
    pub pem: Vec<u8>,
    key: PKey<Private>,
    cert: X509,
}

impl Cert {
    /// RSA 2048, version 3, serial 0, valid from now for 365 days, subject = issuer = CN
    /// `addr`, SAN IP `addr.ip()`, EKU serverAuth, signed with SHA-256.
    pub fn generate(addr: SocketAddr) -> Result<Cert, TlsError> {
        Self::build(addr).map_err(|source| TlsError::Certificate { addr, source })
    }

    fn build(addr: SocketAddr) -> Result<Cert, ErrorStack> {
        let key = PKey::from_rsa(Rsa::generate(2048)?)?;
        let mut builder = X509::builder()?;
        builder.set_version(2)?;
        let serial = BigNum::from_u32(0)?.to_asn1_integer()?;
        builder.set_serial_number(&serial)?;
        let not_before = Asn1Time::days_from_now(0)?;
        builder.set_not_before(&not_before)?;
        let not_after = Asn1Time::days_from_now(365)?;
        builder.set_not_after(&not_after)?;
        builder.set_pubkey(&key)?;
        let mut name = X509Name::builder()?;
        name.append_entry_by_nid(Nid::COMMONNAME, &addr.to_string())?;
        let name = name.build();
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(&name)?;
        let san = SubjectAlternativeName::new()
            .ip(&addr.ip().to_string())
            .build(&builder.x509v3_context(None, None))?;
        builder.append_extension(san)?;
        builder.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        builder.sign(&key, MessageDigest::sha256())?;
        let cert = builder.build();
        let pem = cert.to_pem()?;
        let digest = cert.digest(MessageDigest::sha256())?.to_vec();
        Ok(Cert {
            digest,
            pem,
            key,
            cert,
        })
    }

    /// A TLS server context with this certificate (Mozilla's intermediate profile: TLS 1.2
    /// and 1.3, which the stock client's rustls speaks).
    pub fn acceptor(&self) -> Result<SslAcceptor, TlsError> {
        let build = || -> Result<SslAcceptor, ErrorStack> {
            let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
            b.set_private_key(&self.key)?;
            b.set_certificate(&self.cert)?;
            b.check_private_key()?;
            Ok(b.build())
        };
        build().map_err(TlsError::Acceptor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_as_sccache_makes_it() {
        let addr: SocketAddr = "127.0.0.1:10501".parse().unwrap();
        let c = Cert::generate(addr).unwrap();
        let x = X509::from_pem(&c.pem).unwrap();
        assert_eq!(
            x.digest(MessageDigest::sha256()).unwrap().to_vec(),
            c.digest
        );
        let cn = x
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .unwrap()
            .data()
            .as_slice()
            .to_vec();
        let cn = String::from_utf8(cn).unwrap();
        assert_eq!(cn, "127.0.0.1:10501");
        let san = x.subject_alt_names().unwrap();
        assert_eq!(
            san.iter().next().unwrap().ipaddress().unwrap(),
            [127, 0, 0, 1]
        );
        c.acceptor().unwrap();
    }
}
