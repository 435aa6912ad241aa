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

/// DSSE pre-authentication encoding: `DSSEv1 <len> <type> <len> <body>`.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

/// Wraps `payload` in a DSSE envelope signed (Ed25519 over the PAE) with the minisign
/// secret key at `key_path`; the signature's `keyid` is the minisign key id.
pub fn dsse_sign(
    key_path: &Path,
    payload_type: &str,
    payload: &[u8],
) -> Result<serde_json::Value, BundleError> {
    use base64::Engine as _;
    let (sk, id) = load_secret_key(key_path)?;
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(secret_seed(&sk)));
    let sig = kp.sk.sign(pae(payload_type, payload), None);
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(serde_json::json!({
        "payloadType": payload_type,
        "payload": b64.encode(payload),
        "signatures": [{ "keyid": id, "sig": b64.encode(sig.as_ref()) }],
    }))
}

/// Checks a DSSE envelope against `trust`: at least one signature by a trusted key must
/// verify. Returns the payload type, the payload and the ids of the verifying keys.
pub fn dsse_verify(
    envelope: &serde_json::Value,
    trust: &Trust,
    what: &str,
) -> Result<(String, Vec<u8>, Vec<String>), BundleError> {
    use base64::Engine as _;
    let fail = |message: String| BundleError::Signature {
        what: what.to_owned(),
        message,
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload_type = envelope["payloadType"]
        .as_str()
        .ok_or_else(|| fail("not a DSSE envelope (no payloadType)".into()))?;
    let payload = b64
        .decode(envelope["payload"].as_str().unwrap_or(""))
        .map_err(|e| fail(format!("payload is not base64: {e}")))?;
    let sigs = envelope["signatures"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if sigs.is_empty() {
        return Err(fail("the envelope has no signatures".into()));
    }
    let message = pae(payload_type, &payload);
    let mut ok = Vec::new();
    for s in &sigs {
        let id = s["keyid"].as_str().unwrap_or("");
        let Some(key) = trust.keys.iter().find(|k| k.id == id) else {
            continue;
        };
        let sig = b64
            .decode(s["sig"].as_str().unwrap_or(""))
            .map_err(|e| fail(format!("signature by {id} is not base64: {e}")))?;
        let pk_bytes = key.key.to_bytes();
        let pk = ed25519_compact::PublicKey::from_slice(&pk_bytes[10..42])
            .map_err(|e| fail(format!("key {id}: {e}")))?;
        let sig = ed25519_compact::Signature::from_slice(&sig)
            .map_err(|e| fail(format!("signature by {id}: {e}")))?;
        pk.verify(&message, &sig).map_err(|_| {
            fail(format!(
                "signature by key {id} ({}) does not verify: the statement was changed after \
                 signing",
                key.source
            ))
        })?;
        ok.push(id.to_owned());
    }
    if ok.is_empty() {
        let ids: Vec<&str> = sigs.iter().filter_map(|s| s["keyid"].as_str()).collect();
        return Err(fail(format!(
            "signed by key {} but none of them is trusted; pass --key KEY.pub",
            ids.join(", ")
        )));
    }
    Ok((payload_type.to_owned(), payload, ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsse_round_trip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        let (pub_path, _) = keygen(&key).unwrap();
        let trusted = Trust {
            keys: vec![load_public_key(pub_path.to_str().unwrap(), dir.path()).unwrap()],
        };
        let env = dsse_sign(&key, "application/vnd.in-toto+json", b"{\"a\":1}").unwrap();
        let (t, body, ids) = dsse_verify(&env, &trusted, "x").unwrap();
        assert_eq!(t, "application/vnd.in-toto+json");
        assert_eq!(body, b"{\"a\":1}");
        assert_eq!(ids, vec![trusted.keys[0].id.clone()]);
        let mut bad = env.clone();
        bad["payload"] = "eyJhIjoyfQ==".into(); // {"a":2}
        let err = dsse_verify(&bad, &trusted, "x").unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");
        let other = dir.path().join("o.key");
        let (opub, _) = keygen(&other).unwrap();
        let wrong = Trust {
            keys: vec![load_public_key(opub.to_str().unwrap(), dir.path()).unwrap()],
        };
        let err = dsse_verify(&env, &wrong, "x").unwrap_err().to_string();
        assert!(err.contains("none of them is trusted"), "{err}");
    }
}
