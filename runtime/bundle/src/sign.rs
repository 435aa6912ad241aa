//! Keys and signatures in minisign format (Ed25519; the signature covers the BLAKE2b-512
//! prehash of `manifest.json`, and a trusted comment naming the bundle), so Debian's
//! `minisign -V` checks them too.

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::file::BundleHead;
use crate::{BundleError, io_err};

/// A public key trusted to sign toolchains.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    /// 16 uppercase hex digits, as `minisign` prints key ids.
    pub id: String,
    pub key: minisign::PublicKey,
    /// Where it came from (a file path, or "inline"), for messages.
    pub source: String,
}

/// Which keys a verification accepts.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    pub keys: Vec<TrustedKey>,
}

pub(crate) fn key_id(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    b.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(b))
}

/// Generates an unencrypted key pair: the secret key at `out` (mode 0600) and the public
/// key at `out` with its extension replaced by `.pub`. Refuses to overwrite either.
pub fn keygen(out: &Path) -> Result<(PathBuf, String), BundleError> {
    let pub_path = out.with_extension("pub");
    if pub_path == out {
        return Err(BundleError::Key {
            path: out.to_owned(),
            message: "the secret key file must not end in .pub".into(),
        });
    }
    for p in [out, pub_path.as_path()] {
        if p.exists() {
            return Err(BundleError::Key {
                path: p.to_owned(),
                message: "already exists; wbuild never overwrites a key (remove it first)".into(),
            });
        }
    }
    let kp = minisign::KeyPair::generate_unencrypted_keypair().map_err(|e| BundleError::Key {
        path: out.to_owned(),
        message: e.to_string(),
    })?;
    let id = key_id(kp.pk.keynum());
    let sk_text = kp
        .sk
        .to_box(Some(&format!("wbuild toolchain secret key {id}")))
        .map_err(|e| BundleError::Key {
            path: out.to_owned(),
            message: e.to_string(),
        })?
        .to_string();
    let pk_text = kp
        .pk
        .to_box()
        .map_err(|e| BundleError::Key {
            path: pub_path.clone(),
            message: e.to_string(),
        })?
        .to_string();
    let write = |p: &Path, text: &str, mode: u32| -> Result<(), BundleError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .map_err(|e| io_err(p, e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err(p, e))
    };
    write(out, &sk_text, 0o600)?;
    write(&pub_path, &pk_text, 0o644)?;
    Ok((pub_path, id))
}

/// Loads an unencrypted minisign secret key.
pub fn load_secret_key(path: &Path) -> Result<(minisign::SecretKey, String), BundleError> {
    let bad = |message: String| BundleError::Key {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let sk_box = minisign::SecretKeyBox::from_string(&text)
        .map_err(|e| bad(format!("not a minisign secret key: {e}")))?;
    let sk = sk_box.into_unencrypted_secret_key().map_err(|e| {
        bad(format!(
            "cannot use this secret key ({e}); wbuild signs with unencrypted keys from \
             `wbuild toolchain keygen` (or `minisign -G -W`)"
        ))
    })?;
    if sk.is_encrypted() {
        return Err(bad(
            "the secret key is password-protected; wbuild signs with unencrypted keys from \
             `wbuild toolchain keygen` (or `minisign -G -W`)"
                .into(),
        ));
    }
    let id = key_id(sk.keynum());
    Ok((sk, id))
}

/// The Ed25519 seed of a secret key (for DSSE signatures with the same key).
pub fn secret_seed(sk: &minisign::SecretKey) -> [u8; 32] {
    // SecretKey bytes: sig_alg(2) kdf_alg(2) chk_alg(2) salt(32) opslimit(8) memlimit(8)
    // keynum(8) sk(64: seed, then public key) checksum(32).
    let b = sk.to_bytes();
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&b[62..94]);
    seed
}

/// Loads a public key: a `.pub` file written by `keygen` or `minisign -G`, or the
/// base64 key line itself (`RW...`).
pub fn load_public_key(spec: &str, base: &Path) -> Result<TrustedKey, BundleError> {
    let (text, source) = if spec.starts_with("RW") && !spec.contains('/') && spec.len() == 56 {
        (spec.to_owned(), "inline".to_owned())
    } else {
        let p = base.join(spec);
        let t = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
        (t, p.display().to_string())
    };
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .unwrap_or("");
    let key = minisign::PublicKey::from_base64(line).map_err(|e| BundleError::Key {
        path: PathBuf::from(&source),
        message: format!("not a minisign public key: {e}"),
    })?;
    Ok(TrustedKey {
        id: key_id(key.keynum()),
        key,
        source,
    })
}

/// The trusted comment of a bundle signature (covered by the signature; `minisign -V`
/// prints it).
pub fn trusted_comment(head: &BundleHead) -> String {
    format!(
        "wbuild toolchain {} {} {} {}",
        head.manifest.name, head.manifest.version, head.manifest.platform, head.digest
    )
}

/// Signs the manifest; adds (or replaces) the key's signature in `head`. Returns the key id.
pub fn sign(head: &mut BundleHead, key_path: &Path) -> Result<String, BundleError> {
    let (sk, id) = load_secret_key(key_path)?;
    let sig = minisign::sign(
        None,
        &sk,
        Cursor::new(&head.manifest_bytes),
        Some(&trusted_comment(head)),
        Some(&format!("signature from wbuild toolchain key {id}")),
    )
    .map_err(|e| BundleError::Key {
        path: key_path.to_owned(),
        message: format!("signing failed: {e}"),
    })?;
    head.signatures.insert(id.clone(), sig.into_string());
    Ok(id)
}

/// Checks the bundle's signatures against `trust`: at least one signature must be by a
/// trusted key, and every signature by a trusted key must verify (with the trusted comment
/// naming this bundle's digest). Returns the ids of the keys whose signatures verified.
pub fn verify(head: &BundleHead, trust: &Trust, what: &str) -> Result<Vec<String>, BundleError> {
    let fail = |message: String| BundleError::Signature {
        what: what.to_owned(),
        message,
    };
    if head.signatures.is_empty() {
        return Err(fail(format!(
            "bundle {} ({} {}) is unsigned; sign it with `wbuild toolchain sign BUNDLE --key \
             KEY` before publishing",
            head.digest, head.manifest.name, head.manifest.version
        )));
    }
    if trust.keys.is_empty() {
        return Err(fail(
            "no trusted public keys: list them under [trust] keys in wbuild.toml, or pass \
             --key KEY.pub"
                .into(),
        ));
    }
    let mut ok = Vec::new();
    let by_id: BTreeMap<&str, &TrustedKey> =
        trust.keys.iter().map(|k| (k.id.as_str(), k)).collect();
    for (id, text) in &head.signatures {
        let Some(key) = by_id.get(id.as_str()) else {
            continue;
        };
        let sig = minisign::SignatureBox::from_string(text)
            .map_err(|e| fail(format!("signature by key {id} is unreadable: {e}")))?;
        if key_id(sig.keynum()) != *id {
            return Err(fail(format!(
                "signatures/{id}.minisig holds a signature by key {}",
                key_id(sig.keynum())
            )));
        }
        minisign::verify(
            &key.key,
            &sig,
            Cursor::new(&head.manifest_bytes),
            true,
            false,
            false,
        )
        .map_err(|e| {
            fail(format!(
                "signature by key {id} ({}) does not verify: {e}; the manifest was changed \
                 after signing, or the signature is corrupt",
                key.source
            ))
        })?;
        let comment = sig.trusted_comment().unwrap_or_default();
        if comment != trusted_comment(head) {
            return Err(fail(format!(
                "signature by key {id} was made for '{comment}', not for this bundle"
            )));
        }
        ok.push(id.clone());
    }
    if ok.is_empty() {
        let signed: Vec<&str> = head.signatures.keys().map(String::as_str).collect();
        let trusted: Vec<String> = trust
            .keys
            .iter()
            .map(|k| format!("{} ({})", k.id, k.source))
            .collect();
        return Err(fail(format!(
            "signed by key {} but none of them is trusted (trusted: {}); add the signer's \
             public key to [trust] keys",
            signed.join(", "),
            trusted.join(", ")
        )));
    }
    Ok(ok)
}
