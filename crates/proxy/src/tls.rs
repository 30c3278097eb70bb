//! TLS termination with rustls (aws-lc-rs provider, TLS 1.2 and 1.3 only, ALPN `h2`
//! and `http/1.1`).
//!
//! Certificates come from PEM files. Each is indexed by the DNS names in its subject
//! alternative names; a handshake picks the certificate for its SNI by exact name, then
//! by a `*.` wildcard covering exactly one label; clients without SNI, or with a name
//! no certificate covers, get the first certificate. The index lives behind an
//! `ArcSwap`, so [`SniResolver::swap`] takes up new files without touching open
//! connections.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ProxyError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Certificates indexed by name.
#[derive(Default)]
pub(crate) struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    first: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn insert(&mut self, key: Arc<CertifiedKey>, names: &[String]) {
        for name in names {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let (map, name) = match name.strip_prefix("*.") {
                Some(suffix) => (&mut self.wildcard, suffix.to_owned()),
                None => (&mut self.exact, name),
            };
            // The first certificate listed for a name keeps it.
            map.entry(name).or_insert_with(|| key.clone());
        }
        if self.first.is_none() {
            self.first = Some(key);
        }
    }

    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return Some(k.clone());
            }
        }
        self.first.clone()
    }
}

/// Picks a certificate per handshake from the current [`CertStore`].
pub(crate) struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl SniResolver {
    pub(crate) fn new(store: CertStore) -> Self {
        Self {
            store: ArcSwap::from_pointee(store),
        }
    }

    pub(crate) fn swap(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().find(hello.server_name())
    }
}

/// The rustls server configuration shared by all TLS connections.
pub(crate) fn server_config(resolver: Arc<SniResolver>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .unwrap_or_else(|e| panic!("aws-lc-rs supports TLS 1.2 and 1.3: {e}"))
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Loads one certificate/key pair and the DNS names it is for.
fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>), String> {
    let cert_pem = std::fs::read(cert_path)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert_path.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", cert_path.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "{}: no certificate found in the PEM file",
            cert_path.display()
        ));
    };
    let names: Vec<String> = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("{}: cannot parse the certificate: {e}", cert_path.display()))?
        .valid_dns_names()
        .map(str::to_owned)
        .collect();
    let key_pem = std::fs::read(key_path)
        .map_err(|e| format!("cannot read private key {}: {e}", key_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!(
                "{}: no private key found in the PEM file",
                key_path.display()
            )
        }
        e => format!("{}: invalid private key: {e}", key_path.display()),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unsupported private key: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(format!(
                "{} does not match the certificate in {}",
                key_path.display(),
                cert_path.display()
            ));
        }
    }
    Ok((certified, names))
}

/// Loads every pair; all problems at once, or the store.
pub(crate) fn load_store(certs: &[(PathBuf, PathBuf)]) -> Result<CertStore, ProxyError> {
    let provider = provider();
    let mut store = CertStore::default();
    let mut problems = Vec::new();
    for (cert, key) in certs {
        match load_pair(cert, key, &provider) {
            Ok((certified, names)) => store.insert(Arc::new(certified), &names),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(store)
    } else {
        Err(ProxyError::Certificates(problems))
    }
}

/// Problems with certificate/key files, one readable message each (unreadable file,
/// no certificate, no or invalid key, key not matching the certificate); empty when
/// all pairs load. For `berth check`.
pub fn check_certificates(certs: &[(PathBuf, PathBuf)]) -> Vec<String> {
    let provider = provider();
    certs
        .iter()
        .filter_map(|(cert, key)| load_pair(cert, key, &provider).err())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).expect("write");
        p
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("berth-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn check_reports_each_problem() {
        let dir = tempdir("check");
        let (a_cert, a_key) = generated(&["a.test"]);
        let (_, b_key) = generated(&["b.test"]);
        let cert = write(&dir, "a.pem", &a_cert);
        let key = write(&dir, "a.key", &a_key);
        let other_key = write(&dir, "b.key", &b_key);
        let empty = write(&dir, "empty.pem", "nothing here\n");
        let missing = dir.join("missing.pem");

        assert!(check_certificates(&[(cert.clone(), key.clone())]).is_empty());
        let problems = check_certificates(&[
            (missing.clone(), key.clone()),
            (empty.clone(), key.clone()),
            (cert.clone(), empty.clone()),
            (cert.clone(), other_key.clone()),
            (key.clone(), cert.clone()),
        ]);
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(
            problems[0].starts_with("cannot read certificate"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].contains("no certificate found"),
            "{}",
            problems[1]
        );
        assert!(
            problems[2].contains("no private key found"),
            "{}",
            problems[2]
        );
        assert!(
            problems[3].contains("does not match the certificate"),
            "{}",
            problems[3]
        );
        assert!(
            problems[4].contains("no certificate found"),
            "{}",
            problems[4]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn store_picks_by_sni() {
        let dir = tempdir("store");
        let mut pairs = Vec::new();
        for (i, names) in [&["first.test"][..], &["a.test", "*.wild.test"][..]]
            .iter()
            .enumerate()
        {
            let (c, k) = generated(names);
            pairs.push((
                write(&dir, &format!("{i}.pem"), &c),
                write(&dir, &format!("{i}.key"), &k),
            ));
        }
        let store = load_store(&pairs).expect("store");
        let first = store.find(None).expect("first");
        let second = store.find(Some("a.test")).expect("a");
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(
            &store.find(Some("X.Wild.Test")).expect("wild"),
            &second
        ));
        assert!(Arc::ptr_eq(
            &store.find(Some("y.x.wild.test")).expect("deep"),
            &first
        ));
        assert!(Arc::ptr_eq(
            &store.find(Some("wild.test")).expect("bare"),
            &first
        ));
        assert!(Arc::ptr_eq(
            &store.find(Some("unknown.test")).expect("unknown"),
            &first
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
