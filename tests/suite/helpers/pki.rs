//! `TestCa`: a certificate authority of one test's own, made with OpenSSL,
//! and the certificates it signs for loopback servers and clients. The TLS
//! tests (Vault's stand-in, Redis and Postgres over TLS) trust it and
//! nothing else; a second `TestCa` is the "wrong CA".

use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};

/// A self-signed CA, valid two days.
pub struct TestCa {
    cert: X509,
    key: PKey<Private>,
}

/// A certificate the CA signed and its private key, both PEM (the key
/// PKCS#8, which OpenSSL, native-tls, Redis and Postgres all read).
pub struct Issued {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = key();
        let cert = certificate(name, &key, None, &[]);
        TestCa { cert, key }
    }

    /// The CA's certificate, what a client is told to trust.
    pub fn pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap()
    }

    /// Writes the CA's certificate to `dir/<name>` and gives its path.
    pub fn write_pem(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.pem()).unwrap();
        path
    }

    /// A leaf certificate with CN `name` and these subject alternative
    /// names (an IP address or a DNS name each), good for a server and a
    /// client alike.
    pub fn issue(&self, name: &str, alt_names: &[&str]) -> Issued {
        let key = key();
        let cert = certificate(name, &key, Some((&self.cert, &self.key)), alt_names);
        Issued {
            cert_pem: cert.to_pem().unwrap(),
            key_pem: key.private_key_to_pem_pkcs8().unwrap(),
        }
    }

    /// The usual loopback server: `127.0.0.1` and `localhost`.
    pub fn issue_loopback(&self) -> Issued {
        self.issue("127.0.0.1", &["127.0.0.1", "localhost"])
    }
}

impl Issued {
    /// Writes `dir/<stem>.crt` and `dir/<stem>.key` (mode 0600, as
    /// Postgres demands of a key file) and gives their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (cert, key)
    }
}

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A certificate for `name`, signed by `issuer`; without one, a
/// self-signed CA certificate.
fn certificate(
    name: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    alt_names: &[&str],
) -> X509 {
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", name).unwrap();
    let subject = subject.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&subject).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    if issuer.is_none() {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        let usage = KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build();
        b.append_extension(usage.unwrap()).unwrap();
    } else if !alt_names.is_empty() {
        let context = b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None);
        let mut names = SubjectAlternativeName::new();
        for alt in alt_names {
            if alt.parse::<std::net::IpAddr>().is_ok() {
                names.ip(alt);
            } else {
                names.dns(alt);
            }
        }
        b.append_extension(names.build(&context).unwrap()).unwrap();
    }
    let (issuer_name, signing_key) = match issuer {
        Some((cert, key)) => (cert.subject_name().to_owned().unwrap(), key),
        None => (subject, key),
    };
    b.set_issuer_name(&issuer_name).unwrap();
    b.sign(signing_key, MessageDigest::sha256()).unwrap();
    b.build()
}
