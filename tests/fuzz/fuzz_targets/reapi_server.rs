//! Fuzzes the REAPI request handlers of `wbuild serve` (Capabilities, ContentAddressableStorage,
//! ActionCache, ByteStream), called in-process over a fresh store (no network).
//!
//! Input: a sequence of commands `[op][flags][len u16 LE][len bytes]`. The bytes are decoded
//! as the request message of `op` (`prost::Message::decode`; an undecodable one is skipped).
//! With flag bit 0 ("fix"), the request's digests are replaced by ones the fuzzer cannot
//! compute: digests of the uploaded bytes, or of blobs and actions stored earlier in the same
//! input, so the success paths are reached. ByteStream `Write` bodies are gRPC-framed
//! messages; with flag bit 1 the raw bytes are the HTTP body.
//!
//! Invariants: no panic; a blob is only ever stored under the digest its bytes hash to (the
//! CAS directories are checked after every input); every blob returned (batch read,
//! ByteStream read, inlined action-result contents) hashes to the digest it is returned for,
//! size included; a result is recorded only when its blobs exist; action-cache writes need
//! the token.

#![no_main]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::codec::Codec;
use tonic::{Code, Request};
use wbuild_remote::grpc::bytestream::{
    QueryWriteStatusRequest, ReadRequest, WriteRequest, WriteResponse,
};
use wbuild_remote::grpc::{
    action_cache_server::ActionCache, byte_stream_server::ByteStream,
    capabilities_server::Capabilities,
    content_addressable_storage_server::ContentAddressableStorage,
};
use wbuild_remote::{ServeConfig, reapi};
use wbuild_store::{Digest, DigestFunction, Store};

const TOKEN: &str = "fuzz-token";
const MAX_COMMANDS: usize = 16;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        // Timers: the server bounds how long a ByteStream stream may stall.
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime")
    })
}

#[path = "common.rs"]
mod common;
use common::scratch;

/// The function a request names, as the server reads it (0: SHA-256).
fn function_of(value: i32) -> Option<DigestFunction> {
    if value == 0 {
        return Some(DigestFunction::Sha256);
    }
    DigestFunction::from_reapi(value)
}

/// What the input stored so far.
struct Model {
    /// (function, hash) -> bytes of every blob the server said it stored.
    blobs: HashMap<(DigestFunction, [u8; 32]), Vec<u8>>,
    /// Digests the "fix" mode picks from: stored blobs, empty blobs, absent blobs.
    known: Vec<Digest>,
    /// Actions recorded (function, hash).
    actions: Vec<Digest>,
}

impl Model {
    fn new() -> Model {
        let mut known = Vec::new();
        for f in DigestFunction::ALL {
            known.push(Digest::empty(f));
            known.push(Digest::of(f, b"never stored"));
        }
        Model {
            blobs: HashMap::new(),
            known,
            actions: Vec::new(),
        }
    }

    fn pick(&self, k: u8) -> Digest {
        self.known[k as usize % self.known.len()]
    }

    fn bytes(&self, d: &Digest) -> Option<&[u8]> {
        if d.size == 0 && *d == Digest::empty(d.function) {
            return Some(&[]);
        }
        self.blobs.get(&(d.function, d.hash)).map(Vec::as_slice)
    }

    fn stored(&mut self, d: Digest, bytes: &[u8]) {
        assert_eq!(
            Digest::of(d.function, bytes),
            d,
            "stored under a wrong digest"
        );
        if self
            .blobs
            .insert((d.function, d.hash), bytes.to_vec())
            .is_none()
        {
            self.known.push(d);
        }
    }
}

/// Checks that `bytes` are the blob `d` names: its hash and its size.
fn check_blob(what: &str, d: &Digest, bytes: &[u8]) {
    let got = Digest::of(d.function, bytes);
    assert_eq!(
        got.hash, d.hash,
        "{what}: bytes returned for {d} hash to {got}"
    );
    assert_eq!(
        bytes.len() as u64,
        d.size,
        "{what}: {} bytes returned for {d}",
        bytes.len()
    );
}

fn flag_function(flags: u8) -> i32 {
    if flags & 0x04 == 0 {
        DigestFunction::Blake3.to_reapi()
    } else {
        DigestFunction::Sha256.to_reapi()
    }
}

fn frame(msgs: &[WriteRequest]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        let b = m.encode_to_vec();
        out.push(0);
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(&b);
    }
    out
}

/// A request carrying the bearer token (CAS and ByteStream writes need it).
fn with_token<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

fn upload_name(d: &Digest) -> String {
    format!(
        "uploads/u-1/blobs/{}/{}/{}",
        d.function.name(),
        d.hex(),
        d.size
    )
}

fn read_name(d: &Digest) -> String {
    format!("blobs/{}/{}/{}", d.function.name(), d.hex(), d.size)
}

/// Every file in the CAS directories hashes to its name.
fn check_cas(dir: &Path) {
    for f in DigestFunction::ALL {
        let cas = dir.join(f.cas_subdir());
        let Ok(shards) = std::fs::read_dir(&cas) else {
            continue;
        };
        for shard in shards.flatten() {
            for blob in std::fs::read_dir(shard.path()).unwrap().flatten() {
                let name = blob.file_name().into_string().unwrap();
                let bytes = std::fs::read(blob.path()).unwrap();
                let d = Digest::of(f, &bytes);
                assert_eq!(
                    d.hex(),
                    name,
                    "CAS file {:?} holds other bytes",
                    blob.path()
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = runtime();
    let dir = tempfile::Builder::new()
        .prefix("wbuild-fuzz-reapi")
        .tempdir_in(scratch())
        .expect("temp dir");
    let store = Arc::new(Store::open(dir.path()).expect("open store"));
    let svc = wbuild_remote::services(
        store.clone(),
        ServeConfig {
            token: Some(TOKEN.to_owned()),
            ..Default::default()
        },
    );
    let mut model = Model::new();
    let mut rest = data;
    let mut n = 0;
    while rest.len() >= 4 && n < MAX_COMMANDS {
        n += 1;
        let (op, flags) = (rest[0], rest[1]);
        let len = (u16::from_le_bytes([rest[2], rest[3]]) as usize).min(rest.len() - 4);
        let payload = &rest[4..4 + len];
        rest = &rest[4 + len..];
        let fix = flags & 1 != 0;
        rt.block_on(command(
            &svc,
            &store,
            &mut model,
            op % 10,
            flags,
            fix,
            payload,
        ));
    }
    // Everything the server said it stored is there, with its bytes.
    for ((f, hash), bytes) in &model.blobs {
        let d = Digest {
            function: *f,
            hash: *hash,
            size: bytes.len() as u64,
        };
        assert_eq!(&store.get_bytes(&d).expect("stored blob"), bytes);
    }
    drop(svc);
    drop(store);
    check_cas(dir.path());
});

async fn command<S>(
    svc: &S,
    store: &Store,
    model: &mut Model,
    op: u8,
    flags: u8,
    fix: bool,
    payload: &[u8],
) where
    S: Capabilities + ContentAddressableStorage + ActionCache + ByteStream,
{
    match op {
        0 => {
            let Ok(req) = reapi::GetCapabilitiesRequest::decode(payload) else {
                return;
            };
            svc.get_capabilities(Request::new(req))
                .await
                .expect("capabilities");
        }
        1 => {
            let Ok(mut req) = reapi::FindMissingBlobsRequest::decode(payload) else {
                return;
            };
            if fix {
                req.digest_function = flag_function(flags);
                req.blob_digests = payload
                    .iter()
                    .take(8)
                    .map(|k| model.pick(*k).to_proto())
                    .collect();
            }
            let Ok(resp) = svc.find_missing_blobs(Request::new(req.clone())).await else {
                return;
            };
            let f = function_of(req.digest_function).expect("accepted function");
            for m in &resp.get_ref().missing_blob_digests {
                assert!(
                    req.blob_digests.contains(m),
                    "missing {m:?} was not asked for"
                );
                let d = Digest::from_proto(f, m).expect("valid digest");
                assert!(
                    model.bytes(&d).is_none(),
                    "stored blob {d} reported missing"
                );
            }
        }
        2 => {
            let Ok(mut req) = reapi::BatchUpdateBlobsRequest::decode(payload) else {
                return;
            };
            if fix {
                req.digest_function = flag_function(flags);
                let f = function_of(req.digest_function).unwrap();
                for (i, r) in req.requests.iter_mut().enumerate() {
                    let mut d = Digest::of(f, &r.data);
                    if flags & 0x08 != 0 && i == 0 {
                        d.size += 1;
                    }
                    r.digest = Some(d.to_proto());
                    if flags & 0x10 == 0 {
                        r.compressor = 0;
                    }
                }
            }
            let Ok(resp) = svc.batch_update_blobs(with_token(req.clone())).await else {
                return;
            };
            let f = function_of(req.digest_function).expect("accepted function");
            let responses = &resp.get_ref().responses;
            assert_eq!(responses.len(), req.requests.len());
            for (r, answer) in req.requests.iter().zip(responses) {
                assert_eq!(r.digest, answer.digest);
                let code = answer.status.as_ref().map_or(0, |s| s.code);
                if code == Code::Ok as i32 {
                    let d = Digest::from_proto(f, r.digest.as_ref().unwrap()).unwrap();
                    check_blob("BatchUpdateBlobs accepted", &d, &r.data);
                    assert_eq!(store.get_bytes(&d).expect("just stored"), r.data);
                    model.stored(d, &r.data);
                }
            }
        }
        3 => {
            let Ok(mut req) = reapi::BatchReadBlobsRequest::decode(payload) else {
                return;
            };
            if fix {
                req.digest_function = flag_function(flags);
                req.digests = payload
                    .iter()
                    .take(8)
                    .map(|k| {
                        let mut d = model.pick(*k);
                        if k & 0x80 != 0 && flags & 0x08 != 0 {
                            d.size = d.size.wrapping_add(1) & (i64::MAX as u64);
                        }
                        d.to_proto()
                    })
                    .collect();
            }
            let Ok(resp) = svc.batch_read_blobs(Request::new(req.clone())).await else {
                return;
            };
            let f = function_of(req.digest_function).expect("accepted function");
            for answer in &resp.get_ref().responses {
                let d = Digest::from_proto(f, answer.digest.as_ref().expect("digest")).unwrap();
                let code = answer.status.as_ref().map_or(0, |s| s.code);
                if code == Code::Ok as i32 {
                    check_blob("BatchReadBlobs", &d, &answer.data);
                } else {
                    assert!(answer.data.is_empty());
                    assert!(
                        model.bytes(&d).is_none_or(|b| b.len() as u64 != d.size),
                        "stored blob {d} not read: {:?}",
                        answer.status
                    );
                }
            }
        }
        4 => {
            let Ok(mut req) = reapi::GetTreeRequest::decode(payload) else {
                return;
            };
            if fix {
                req.digest_function = flag_function(flags);
                req.root_digest =
                    Some(model.pick(payload.first().copied().unwrap_or(0)).to_proto());
            }
            if let Ok(resp) = svc.get_tree(Request::new(req)).await {
                let mut stream = std::pin::pin!(resp.into_inner());
                while let Some(page) = stream.next().await {
                    let _ = page;
                }
            }
        }
        5 => {
            let Ok(mut req) = reapi::GetActionResultRequest::decode(payload) else {
                return;
            };
            if fix && !model.actions.is_empty() {
                let a = model.actions
                    [payload.first().copied().unwrap_or(0) as usize % model.actions.len()];
                req.digest_function = a.function.to_reapi();
                req.action_digest = Some(a.to_proto());
                req.inline_stdout = flags & 0x08 != 0;
                req.inline_stderr = flags & 0x10 != 0;
                if flags & 0x20 != 0 {
                    req.inline_output_files = vec!["o0".into(), "o1".into()];
                }
            }
            let Ok(resp) = svc.get_action_result(Request::new(req.clone())).await else {
                return;
            };
            let f = function_of(req.digest_function).expect("accepted function");
            let r = resp.into_inner();
            let inlined = |what: &str, d: Option<&reapi::Digest>, raw: &[u8]| {
                if raw.is_empty() {
                    return;
                }
                let d = d.unwrap_or_else(|| panic!("{what} inlined without a digest"));
                check_blob(what, &Digest::from_proto(f, d).unwrap(), raw);
            };
            inlined("inlined stdout", r.stdout_digest.as_ref(), &r.stdout_raw);
            inlined("inlined stderr", r.stderr_digest.as_ref(), &r.stderr_raw);
            for of in &r.output_files {
                inlined("inlined output file", of.digest.as_ref(), &of.contents);
                if let Some(d) = &of.digest {
                    let d = Digest::from_proto(f, d).unwrap();
                    assert!(store.has(&d), "result served with output {d} absent");
                }
            }
        }
        6 => {
            let Ok(mut req) = reapi::UpdateActionResultRequest::decode(payload) else {
                return;
            };
            if fix {
                req.digest_function = flag_function(flags);
                let f = function_of(req.digest_function).unwrap();
                req.action_digest = Some(Digest::of(f, payload).to_proto());
                let mut k = payload.iter().copied().cycle();
                let mut next = || k.next().unwrap_or(0);
                let r = req.action_result.get_or_insert_with(Default::default);
                for of in r.output_files.iter_mut().take(4) {
                    of.digest = Some(model.pick(next()).to_proto());
                }
                if flags & 0x40 != 0 {
                    r.stdout_digest = Some(model.pick(next()).to_proto());
                    r.stderr_digest = Some(model.pick(next()).to_proto());
                }
            }
            let mut request = Request::new(req.clone());
            match flags >> 4 & 3 {
                0 | 1 => {
                    request
                        .metadata_mut()
                        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
                }
                2 => {
                    request
                        .metadata_mut()
                        .insert("authorization", "Bearer wrong".parse().unwrap());
                }
                _ => {}
            }
            let authorized = flags >> 4 & 3 <= 1;
            match svc.update_action_result(request).await {
                Ok(_) => {
                    assert!(authorized, "action cache written without the token");
                    let f = function_of(req.digest_function).expect("accepted function");
                    let a = Digest::from_proto(f, req.action_digest.as_ref().unwrap()).unwrap();
                    let r = req.action_result.as_ref().unwrap();
                    let refs = r
                        .output_files
                        .iter()
                        .filter_map(|o| o.digest.as_ref())
                        .chain(r.stdout_digest.as_ref())
                        .chain(r.stderr_digest.as_ref());
                    for d in refs {
                        let d = Digest::from_proto(f, d).unwrap();
                        assert!(store.has(&d), "result recorded with blob {d} absent");
                    }
                    model.actions.push(a);
                }
                Err(s) if !authorized => {
                    assert!(
                        matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied),
                        "{s:?}"
                    );
                }
                Err(_) => {}
            }
        }
        7 => {
            let Ok(mut req) = ReadRequest::decode(payload) else {
                return;
            };
            if fix {
                let mut d = model.pick(payload.first().copied().unwrap_or(0));
                if flags & 0x08 != 0 {
                    d.size += 1;
                }
                req.resource_name = read_name(&d);
                if flags & 0x10 == 0 {
                    req.read_offset = 0;
                    req.read_limit = 0;
                }
            }
            let Ok(resp) = svc.read(Request::new(req.clone())).await else {
                return;
            };
            let mut got = Vec::new();
            let mut stream = std::pin::pin!(resp.into_inner());
            while let Some(chunk) = stream.next().await {
                got.extend_from_slice(&chunk.expect("read chunk").data);
            }
            let d = wbuild_remote::parse_read_resource(&req.resource_name)
                .expect("served a bad name")
                .digest;
            let whole = model
                .bytes(&d)
                .expect("served a blob never stored")
                .to_vec();
            check_blob("ByteStream.Read", &d, &whole);
            let start = req.read_offset as usize;
            let end = if req.read_limit == 0 {
                whole.len()
            } else {
                whole
                    .len()
                    .min(start.saturating_add(req.read_limit as usize))
            };
            assert_eq!(got, whole[start..end], "ByteStream.Read of {d}");
        }
        8 => {
            let body = if flags & 0x02 != 0 {
                payload.to_vec()
            } else if fix {
                let f = function_of(flag_function(flags)).unwrap();
                let mut d = Digest::of(f, payload);
                if flags & 0x08 != 0 {
                    d.size += 1;
                }
                let chunks = (flags >> 5) as usize + 1;
                let size = payload.len().div_ceil(chunks).max(1);
                let mut msgs: Vec<WriteRequest> = Vec::new();
                let mut offset = 0;
                for (i, c) in payload.chunks(size).enumerate() {
                    msgs.push(WriteRequest {
                        resource_name: if i == 0 {
                            upload_name(&d)
                        } else {
                            String::new()
                        },
                        write_offset: offset as i64,
                        finish_write: false,
                        data: c.to_vec(),
                    });
                    offset += c.len();
                }
                if msgs.is_empty() {
                    msgs.push(WriteRequest {
                        resource_name: upload_name(&d),
                        ..Default::default()
                    });
                }
                if flags & 0x10 == 0 {
                    msgs.last_mut().unwrap().finish_write = true;
                }
                frame(&msgs)
            } else {
                let Ok(msg) = WriteRequest::decode(payload) else {
                    return;
                };
                frame(&[msg])
            };
            let messages = decode_frames(&body);
            let decoder =
                tonic_prost::ProstCodec::<WriteResponse, WriteRequest>::default().decoder();
            let stream = tonic::Streaming::new_request(
                decoder,
                http_body_util::Full::new(bytes::Bytes::from(body)),
                None,
                Some(5 << 20),
            );
            let Ok(resp) = svc.write(with_token(stream)).await else {
                return;
            };
            // Accepted: the frames were complete messages naming a digest, ending with
            // finish_write, and their data hashes to that digest.
            let messages = messages.expect("accepted a stream that does not decode");
            let d = wbuild_remote::parse_write_resource(&messages[0].resource_name)
                .expect("accepted a bad name")
                .digest;
            let mut all = Vec::new();
            for m in &messages {
                all.extend_from_slice(&m.data);
                if m.finish_write {
                    break;
                }
            }
            check_blob("ByteStream.Write accepted", &d, &all);
            assert_eq!(resp.get_ref().committed_size as u64, d.size);
            assert_eq!(store.get_bytes(&d).expect("just written"), all);
            model.stored(d, &all);
        }
        _ => {
            let Ok(mut req) = QueryWriteStatusRequest::decode(payload) else {
                return;
            };
            if fix {
                req.resource_name = upload_name(&model.pick(payload.first().copied().unwrap_or(0)));
            }
            let Ok(resp) = svc.query_write_status(Request::new(req.clone())).await else {
                return;
            };
            let d = wbuild_remote::parse_write_resource(&req.resource_name)
                .unwrap()
                .digest;
            assert!(resp.get_ref().complete);
            assert_eq!(resp.get_ref().committed_size as u64, d.size);
            assert!(store.has(&d));
        }
    }
}

/// The messages of a gRPC-framed body (uncompressed), or None if it is not one.
fn decode_frames(mut body: &[u8]) -> Option<Vec<WriteRequest>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 || body[0] != 0 {
            return None;
        }
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let msg = body.get(5..5 + len)?;
        let m = WriteRequest::decode(msg).ok()?;
        let finished = m.finish_write;
        out.push(m);
        if finished {
            break;
        }
        body = &body[5 + len..];
    }
    if out.is_empty() { None } else { Some(out) }
}
