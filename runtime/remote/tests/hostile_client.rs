//! `serve` against clients that try to write without the token, read what they may not,
//! exhaust its memory with uploads that declare huge sizes, send more or other bytes than
//! they declared, stall, name other instances, or skip TLS.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};
use wbuild_remote::grpc::bytestream::{
    QueryWriteStatusRequest, ReadRequest, WriteRequest, WriteResponse,
};
use wbuild_remote::grpc::{
    action_cache_client::ActionCacheClient, byte_stream_client::ByteStreamClient,
    capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient,
};
use wbuild_remote::{RemoteError, ServeConfig, TlsConfig, reapi, serve};
use wbuild_store::{Digest, DigestFunction, Store};

use common::{Pki, Server};

const TOKEN: &str = "hostile-test-token";
const F: DigestFunction = DigestFunction::Sha256;

impl Server {
    fn with_token() -> Server {
        Server::start(ServeConfig {
            token: Some(TOKEN.into()),
            ..Default::default()
        })
    }

    fn anonymous() -> Server {
        Server::start(ServeConfig {
            allow_anonymous_writes: true,
            ..Default::default()
        })
    }

    fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel())
    }

    fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel())
    }

    /// Entries in the store's tmp dir (upload temp files).
    fn tmp_entries(&self) -> usize {
        std::fs::read_dir(self.store.tmp_dir()).map_or(0, |r| r.count())
    }
}

/// `msg` with `authorization: Bearer <token>` when a token is given.
fn authed<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

/// `instance/`, or nothing for the default instance.
fn instance_prefix(instance: &str) -> String {
    if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    }
}

fn upload_name(instance: &str, id: &str, d: &Digest) -> String {
    let prefix = instance_prefix(instance);
    format!("{prefix}uploads/{id}/blobs/{}/{}", d.hex(), d.size)
}

/// The ByteStream resource name to read `d` from `instance`.
fn blob_name(instance: &str, d: &Digest) -> String {
    let prefix = instance_prefix(instance);
    format!("{prefix}blobs/{}/{}", d.hex(), d.size)
}

/// The messages of a ByteStream upload of `data` as `d`, in chunks of `chunk` bytes.
fn write_messages(name: &str, data: &[u8], chunk: usize, finish: bool) -> Vec<WriteRequest> {
    let mut out: Vec<WriteRequest> = data
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| WriteRequest {
            resource_name: if i == 0 {
                name.to_owned()
            } else {
                String::new()
            },
            write_offset: (i * chunk) as i64,
            finish_write: false,
            data: c.to_vec(),
        })
        .collect();
    if out.is_empty() {
        out.push(WriteRequest {
            resource_name: name.to_owned(),
            ..Default::default()
        });
    }
    out.last_mut().unwrap().finish_write = finish;
    out
}

fn write(
    s: &Server,
    msgs: Vec<WriteRequest>,
    token: Option<&str>,
) -> Result<WriteResponse, Status> {
    let mut bs = s.bytestream();
    s.rt.block_on(async move {
        bs.write(authed(tokio_stream::iter(msgs), token))
            .await
            .map(|r| r.into_inner())
    })
}

fn batch_update(s: &Server, blobs: &[&[u8]], token: Option<&str>) -> Result<Vec<i32>, Status> {
    let req = reapi::BatchUpdateBlobsRequest {
        requests: blobs
            .iter()
            .map(|b| reapi::batch_update_blobs_request::Request {
                digest: Some(Digest::of(F, b).to_proto()),
                data: b.to_vec(),
                compressor: 0,
            })
            .collect(),
        digest_function: F.to_reapi(),
        ..Default::default()
    };
    let mut cas = s.cas();
    s.rt.block_on(cas.batch_update_blobs(authed(req, token)))
        .map(|r| {
            r.into_inner()
                .responses
                .into_iter()
                .map(|r| r.status.unwrap().code)
                .collect()
        })
}

fn update_action(s: &Server, output: &Digest, token: Option<&str>) -> Result<(), Status> {
    let req = reapi::UpdateActionResultRequest {
        action_digest: Some(Digest::of(F, b"an action").to_proto()),
        action_result: Some(reapi::ActionResult {
            output_files: vec![reapi::OutputFile {
                path: "out.txt".into(),
                digest: Some(output.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        digest_function: F.to_reapi(),
        ..Default::default()
    };
    let mut ac = ActionCacheClient::new(s.channel());
    s.rt.block_on(ac.update_action_result(authed(req, token)))
        .map(|_| ())
}

fn read(
    s: &Server,
    name: &str,
    offset: i64,
    limit: i64,
    token: Option<&str>,
) -> Result<Vec<Vec<u8>>, Status> {
    let mut bs = s.bytestream();
    let req = ReadRequest {
        resource_name: name.to_owned(),
        read_offset: offset,
        read_limit: limit,
    };
    s.rt.block_on(async move {
        let mut stream = bs.read(authed(req, token)).await?.into_inner();
        let mut chunks = Vec::new();
        while let Some(m) = stream.message().await? {
            chunks.push(m.data);
        }
        Ok(chunks)
    })
}

fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(s) => s.code(),
    }
}

#[test]
fn every_write_needs_the_token() {
    let s = Server::with_token();
    let blob: &[u8] = b"an attacker's output";
    let d = Digest::of(F, blob);
    let name = upload_name("", "u1", &d);
    // Without a token: UNAUTHENTICATED; with a guessed one: PERMISSION_DENIED. Nothing stored.
    for (token, want) in [
        (None, Code::Unauthenticated),
        (Some("guess"), Code::PermissionDenied),
    ] {
        assert_eq!(code(batch_update(&s, &[blob], token)), want);
        assert_eq!(
            code(write(&s, write_messages(&name, blob, 4, true), token)),
            want
        );
        assert!(!s.store.has(&d));
        assert_eq!(code(update_action(&s, &d, token)), want);
    }
    // With the token: accepted.
    assert_eq!(
        batch_update(&s, &[blob], Some(TOKEN)).unwrap(),
        [Code::Ok as i32]
    );
    let other: &[u8] = b"streamed with the token";
    let od = Digest::of(F, other);
    let r = write(
        &s,
        write_messages(&upload_name("", "u2", &od), other, 5, true),
        Some(TOKEN),
    )
    .unwrap();
    assert_eq!(r.committed_size, other.len() as i64);
    assert_eq!(s.store.get_bytes(&od).unwrap(), other);
    update_action(&s, &d, Some(TOKEN)).unwrap();
    // Reads stay anonymous by default.
    assert_eq!(
        read(&s, &blob_name("", &od), 0, 0, None).unwrap(),
        [other.to_vec()]
    );
}

#[test]
fn anonymous_writes_only_when_explicitly_allowed() {
    // Neither a token nor --allow-anonymous-writes: the server does not start, and says
    // which flag to pass.
    let err = ServeConfig::default().validate().unwrap_err().to_string();
    assert!(
        err.contains("--token-file") && err.contains("--allow-anonymous-writes"),
        "{err}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let r = rt.block_on(serve(store, listener, ServeConfig::default(), async {}));
    assert!(matches!(r, Err(RemoteError::Config(_))), "{r:?}");
    let err = ServeConfig {
        require_token_for_reads: true,
        allow_anonymous_writes: true,
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("--token-file"), "{err}");

    // Allowed: every write works without a token.
    let s = Server::anonymous();
    let blob: &[u8] = b"open cache";
    let d = Digest::of(F, blob);
    assert_eq!(batch_update(&s, &[blob], None).unwrap(), [Code::Ok as i32]);
    let other: &[u8] = b"open stream";
    let od = Digest::of(F, other);
    write(
        &s,
        write_messages(&upload_name("", "u", &od), other, 3, true),
        None,
    )
    .unwrap();
    assert!(s.store.has(&od));
    update_action(&s, &d, None).unwrap();
}

#[test]
fn every_read_needs_the_token_with_require_token_for_reads() {
    let s = Server::start(ServeConfig {
        token: Some(TOKEN.into()),
        require_token_for_reads: true,
        ..Default::default()
    });
    let blob: &[u8] = b"secret source";
    let d = s.store.put_bytes_as(F, blob).unwrap();
    let read_name = blob_name("", &d);
    let reads = |token: Option<&str>| -> Vec<(&str, Result<(), Status>)> {
        let ch = s.channel();
        let mut caps = CapabilitiesClient::new(ch.clone());
        let mut cas = ContentAddressableStorageClient::new(ch.clone());
        let mut ac = ActionCacheClient::new(ch.clone());
        let mut bs = ByteStreamClient::new(ch);
        let digest_function = F.to_reapi();
        s.rt.block_on(async {
            vec![
                (
                    "GetCapabilities",
                    caps.get_capabilities(authed(Default::default(), token))
                        .await
                        .map(|_| ()),
                ),
                (
                    "FindMissingBlobs",
                    cas.find_missing_blobs(authed(
                        reapi::FindMissingBlobsRequest {
                            blob_digests: vec![d.to_proto()],
                            digest_function,
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .map(|_| ()),
                ),
                (
                    "BatchReadBlobs",
                    cas.batch_read_blobs(authed(
                        reapi::BatchReadBlobsRequest {
                            digests: vec![d.to_proto()],
                            digest_function,
                            ..Default::default()
                        },
                        token,
                    ))
                    .await
                    .map(|_| ()),
                ),
                (
                    "GetActionResult",
                    match ac
                        .get_action_result(authed(
                            reapi::GetActionResultRequest {
                                action_digest: Some(d.to_proto()),
                                digest_function,
                                ..Default::default()
                            },
                            token,
                        ))
                        .await
                    {
                        Err(e) if e.code() == Code::NotFound => Ok(()),
                        r => r.map(|_| ()),
                    },
                ),
                (
                    "Read",
                    match bs
                        .read(authed(
                            ReadRequest {
                                resource_name: read_name.clone(),
                                ..Default::default()
                            },
                            token,
                        ))
                        .await
                    {
                        Ok(r) => {
                            let mut st = r.into_inner();
                            let mut got = Vec::new();
                            let mut res = Ok(());
                            loop {
                                match st.message().await {
                                    Ok(Some(m)) => got.extend(m.data),
                                    Ok(None) => break,
                                    Err(e) => {
                                        res = Err(e);
                                        break;
                                    }
                                }
                            }
                            res.map(|()| assert_eq!(got, blob))
                        }
                        Err(e) => Err(e),
                    },
                ),
                (
                    "QueryWriteStatus",
                    bs.query_write_status(authed(
                        QueryWriteStatusRequest {
                            resource_name: upload_name("", "q", &d),
                        },
                        token,
                    ))
                    .await
                    .map(|_| ()),
                ),
            ]
        })
    };
    for (what, r) in reads(None) {
        assert_eq!(
            r.err().map(|e| e.code()),
            Some(Code::Unauthenticated),
            "{what} without the token"
        );
    }
    for (what, r) in reads(Some("guess")) {
        assert_eq!(
            r.err().map(|e| e.code()),
            Some(Code::PermissionDenied),
            "{what} with a wrong token"
        );
    }
    for (what, r) in reads(Some(TOKEN)) {
        assert!(r.is_ok(), "{what} with the token: {r:?}");
    }
}

/// The process's resident set size, from /proc/self/status.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

#[test]
fn uploads_that_declare_a_gigabyte_do_not_grow_memory() {
    const STREAMS: usize = 6;
    const SENT: usize = 16 << 20; // per stream: 96 MiB in all, more than the bound below
    const CHUNK: usize = 64 << 10;
    let s = Server::anonymous();
    // Warm up the server and client (threads, buffers) before measuring.
    let warm: &[u8] = &[1u8; 3 * CHUNK];
    let wd = Digest::of(F, warm);
    write(
        &s,
        write_messages(&upload_name("", "warm", &wd), warm, CHUNK, true),
        None,
    )
    .unwrap();
    let before = rss_bytes();
    // Each stream declares 1 GiB and sends SENT bytes, then stalls.
    let declared = Digest::from_hex(F, &"ab".repeat(32), 1 << 30).unwrap();
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    let names: Vec<String> = (0..STREAMS)
        .map(|i| upload_name("", &format!("big-{i}"), &declared))
        .collect();
    for name in &names {
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
        let mut bs = s.bytestream();
        calls.push(s.rt.spawn(async move {
            bs.write(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        }));
        senders.push((tx, name.clone()));
    }
    let chunk = vec![0x5au8; CHUNK];
    s.rt.block_on(async {
        for i in 0..SENT / CHUNK {
            for (tx, name) in &senders {
                tx.send(WriteRequest {
                    resource_name: if i == 0 { name.clone() } else { String::new() },
                    write_offset: (i * CHUNK) as i64,
                    finish_write: false,
                    data: chunk.clone(),
                })
                .await
                .unwrap();
            }
        }
    });
    // Wait (with a deadline) until the server has received every byte sent.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut bs = s.bytestream();
    for name in &names {
        loop {
            let st =
                s.rt.block_on(bs.query_write_status(QueryWriteStatusRequest {
                    resource_name: name.clone(),
                }))
                .unwrap()
                .into_inner();
            assert!(!st.complete);
            if st.committed_size == SENT as i64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: the server received only {} bytes",
                st.committed_size
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let during = rss_bytes();
    let growth = during.saturating_sub(before);
    eprintln!(
        "resident memory: {} MiB before, {} MiB with {STREAMS} uploads of {} MiB each in progress",
        before >> 20,
        during >> 20,
        SENT >> 20
    );
    assert!(
        growth < 64 << 20,
        "resident memory grew by {} MiB while {STREAMS} uploads held {} MiB each",
        growth >> 20,
        SENT >> 20
    );
    // The streams end short: refused, temp files removed.
    drop(senders);
    for c in calls {
        let r = s.rt.block_on(c).unwrap();
        assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
    }
    assert!(!s.store.has(&declared));
    assert_eq!(s.tmp_entries(), 0);
}

#[test]
fn uploads_with_more_or_fewer_or_other_bytes_than_declared_are_refused() {
    let s = Server::anonymous();
    let blob: &[u8] = b"0123456789";
    let d = Digest::of(F, blob);
    let name = upload_name("", "u", &d);
    // More than declared (in one message, and across messages).
    let long = [blob, blob].concat();
    for chunk in [long.len(), 4] {
        let err = write(&s, write_messages(&name, &long, chunk, true), None).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("declared size"), "{err:?}");
    }
    // Fewer, with finish_write, and a stream that just ends.
    let err = write(&s, write_messages(&name, &blob[..4], 2, true), None).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = write(&s, write_messages(&name, &blob[..4], 2, false), None).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("without finish_write"), "{err:?}");
    // Other bytes of the same length.
    let err = write(&s, write_messages(&name, b"9876543210", 3, true), None).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("hash to"), "{err:?}");
    // A gap in the offsets.
    let mut msgs = write_messages(&name, blob, 4, true);
    msgs[1].write_offset += 1;
    assert_eq!(code(write(&s, msgs, None)), Code::InvalidArgument);
    // Nothing of any of it was stored or left behind.
    assert!(!s.store.has(&d));
    assert_eq!(s.tmp_entries(), 0);
    // The same upload, correct: stored.
    write(&s, write_messages(&name, blob, 4, true), None).unwrap();
    assert_eq!(s.store.get_bytes(&d).unwrap(), blob);
    assert_eq!(s.tmp_entries(), 0);
}

#[test]
fn an_oversized_declared_size_is_refused_at_the_first_message() {
    let s = Server::start(ServeConfig {
        allow_anonymous_writes: true,
        max_blob_size: 1 << 20,
        ..Default::default()
    });
    let declared = Digest::from_hex(F, &"cd".repeat(32), (1 << 20) + 1).unwrap();
    // One message, and the stream kept open: the answer comes without more being sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(1);
    let mut bs = s.bytestream();
    let err = s.rt.block_on(async move {
        tx.send(WriteRequest {
            resource_name: upload_name("", "huge", &declared),
            data: vec![0; 1024],
            ..Default::default()
        })
        .await
        .unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            bs.write(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .expect("an answer while the stream is still open");
        drop(tx);
        r.unwrap_err()
    });
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("--max-blob-size"), "{err:?}");
    assert_eq!(s.tmp_entries(), 0);
}

#[test]
fn an_idle_upload_times_out_and_leaves_nothing() {
    let s = Server::start(ServeConfig {
        allow_anonymous_writes: true,
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    });
    let blob = vec![3u8; 1000];
    let d = Digest::of(F, &blob);
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(1);
    let mut bs = s.bytestream();
    let err = s.rt.block_on(async move {
        tx.send(WriteRequest {
            resource_name: upload_name("", "idle", &d),
            data: blob[..10].to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        // The client never sends again (tx stays alive).
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            bs.write(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .expect("the server drops an idle upload");
        drop(tx);
        r.unwrap_err()
    });
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(!s.store.has(&d));
    assert_eq!(s.tmp_entries(), 0);
}

#[test]
fn uploads_beyond_the_stream_limit_wait_for_a_slot() {
    let s = Server::start(ServeConfig {
        allow_anonymous_writes: true,
        max_streams: 2,
        ..Default::default()
    });
    let held = Digest::from_hex(F, &"ef".repeat(32), 100).unwrap();
    let mut holders = Vec::new();
    for i in 0..2 {
        let name = upload_name("", &format!("held-{i}"), &held);
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(1);
        let mut bs = s.bytestream();
        let call = s.rt.spawn(async move {
            bs.write(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        s.rt.block_on(tx.send(WriteRequest {
            resource_name: name.clone(),
            data: vec![1],
            ..Default::default()
        }))
        .unwrap();
        holders.push((tx, call, name));
    }
    // Both slots are taken once both uploads show progress.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut bs = s.bytestream();
    for (_, _, name) in &holders {
        while s
            .rt
            .block_on(bs.query_write_status(QueryWriteStatusRequest {
                resource_name: name.clone(),
            }))
            .map(|r| r.into_inner().committed_size)
            .ok()
            != Some(1)
        {
            assert!(Instant::now() < deadline, "{name} never started");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // A third upload is not taken in while both are held...
    let blob: &[u8] = b"third";
    let d = Digest::of(F, blob);
    let msgs = write_messages(&upload_name("", "third", &d), blob, 5, true);
    let mut bs3 = s.bytestream();
    let third =
        s.rt.spawn(async move { bs3.write(tokio_stream::iter(msgs)).await });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!third.is_finished());
    assert!(!s.store.has(&d));
    // ...and is once one of them ends.
    let (tx, call, _) = holders.remove(0);
    drop(tx);
    assert_eq!(
        s.rt.block_on(call).unwrap().unwrap_err().code(),
        Code::InvalidArgument
    );
    s.rt.block_on(third).unwrap().unwrap();
    assert!(s.store.has(&d));
}

#[test]
fn large_blobs_are_read_in_chunks_with_offset_and_limit() {
    let s = Server::with_token();
    let blob: Vec<u8> = (0..(3 * wbuild_remote::READ_CHUNK + 12345))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let d = s.store.put_bytes_as(F, &blob).unwrap();
    let name = blob_name("", &d);
    let whole = read(&s, &name, 0, 0, None).unwrap();
    assert_eq!(whole.len(), 4, "chunks of READ_CHUNK bytes");
    assert!(whole.iter().all(|c| c.len() <= wbuild_remote::READ_CHUNK));
    assert_eq!(whole.concat(), blob);
    let part = read(&s, &name, 1000, 600_000, None).unwrap().concat();
    assert_eq!(part, &blob[1000..601_000]);
    let tail = read(&s, &name, d.size as i64 - 10, 0, None)
        .unwrap()
        .concat();
    assert_eq!(tail, &blob[blob.len() - 10..]);
    let end = read(&s, &name, d.size as i64, 0, None).unwrap().concat();
    assert!(end.is_empty());
    assert_eq!(
        code(read(&s, &name, d.size as i64 + 1, 0, None)),
        Code::OutOfRange
    );
    assert_eq!(code(read(&s, &name, -1, 0, None)), Code::OutOfRange);
    assert_eq!(code(read(&s, &name, 0, -1, None)), Code::InvalidArgument);
    // A size other than the blob's names no blob.
    let wrong = format!("blobs/{}/{}", d.hex(), d.size + 1);
    assert_eq!(code(read(&s, &wrong, 0, 0, None)), Code::NotFound);
}

#[test]
fn another_instance_name_is_refused() {
    let s = Server::start(ServeConfig {
        allow_anonymous_writes: true,
        instance: "main".into(),
        ..Default::default()
    });
    let blob: &[u8] = b"instance blob";
    let d = Digest::of(F, blob);
    let ch = s.channel();
    let mut caps = CapabilitiesClient::new(ch.clone());
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let mut ac = ActionCacheClient::new(ch.clone());
    let digest_function = F.to_reapi();
    for instance in ["", "other", "main/sub"] {
        // `$what` as the RPC `$client.$method` with a `$Req` naming `instance`, reduced to
        // whether it was answered.
        macro_rules! rpc {
            ($what:literal, $client:ident.$method:ident($Req:ident { $($field:tt)* })) => {
                (
                    $what,
                    $client
                        .$method(reapi::$Req {
                            instance_name: instance.to_owned(),
                            $($field)*
                        })
                        .await
                        .map(|_| ()),
                )
            };
        }
        let results: Vec<(&str, Result<(), Status>)> = s.rt.block_on(async {
            vec![
                rpc!(
                    "GetCapabilities",
                    caps.get_capabilities(GetCapabilitiesRequest {})
                ),
                rpc!(
                    "FindMissingBlobs",
                    cas.find_missing_blobs(FindMissingBlobsRequest {
                        blob_digests: vec![d.to_proto()],
                        digest_function,
                    })
                ),
                rpc!(
                    "BatchUpdateBlobs",
                    cas.batch_update_blobs(BatchUpdateBlobsRequest {
                        requests: vec![reapi::batch_update_blobs_request::Request {
                            digest: Some(d.to_proto()),
                            data: blob.to_vec(),
                            compressor: 0,
                        }],
                        digest_function,
                    })
                ),
                rpc!(
                    "BatchReadBlobs",
                    cas.batch_read_blobs(BatchReadBlobsRequest {
                        digests: vec![d.to_proto()],
                        digest_function,
                        ..Default::default()
                    })
                ),
                rpc!(
                    "GetTree",
                    cas.get_tree(GetTreeRequest {
                        root_digest: Some(d.to_proto()),
                        digest_function,
                        ..Default::default()
                    })
                ),
                rpc!(
                    "GetActionResult",
                    ac.get_action_result(GetActionResultRequest {
                        action_digest: Some(d.to_proto()),
                        digest_function,
                        ..Default::default()
                    })
                ),
                rpc!(
                    "UpdateActionResult",
                    ac.update_action_result(UpdateActionResultRequest {
                        action_digest: Some(d.to_proto()),
                        action_result: Some(Default::default()),
                        digest_function,
                        ..Default::default()
                    })
                ),
            ]
        });
        for (what, r) in results {
            let err = r.expect_err(what);
            assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
            assert!(err.message().contains("\"main\""), "{what}: {err:?}");
        }
        let err = write(
            &s,
            write_messages(&upload_name(instance, "u", &d), blob, 4, true),
            None,
        )
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("\"main\""), "{err:?}");
        let err = read(&s, &blob_name(instance, &d), 0, 0, None).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    assert!(!s.store.has(&d));
    // The served instance works.
    write(
        &s,
        write_messages(&upload_name("main", "u", &d), blob, 4, true),
        None,
    )
    .unwrap();
    let got = read(&s, &blob_name("main", &d), 0, 0, None).unwrap();
    assert_eq!(got.concat(), blob);
    s.rt.block_on(caps.get_capabilities(reapi::GetCapabilitiesRequest {
        instance_name: "main".into(),
    }))
    .unwrap();
}

/// A CA, a server certificate for `localhost` and a client certificate, all signed by it.
fn pki() -> Pki {
    Pki::new(&["localhost"])
}

fn tls_server(pki: &Pki, client_ca: bool) -> Server {
    Server::start(ServeConfig {
        token: Some(TOKEN.into()),
        tls: Some(pki.server_tls(client_ca)),
        ..Default::default()
    })
}

/// GetCapabilities over a channel to `s` configured by `tls` (plain text when `None`):
/// whether it was answered. Connection failures count as refusals.
fn capabilities_over(s: &Server, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Channel::from_shared(format!("{scheme}://{}", s.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(20));
    if let Some(t) = tls {
        ep = ep.tls_config(t).map_err(|e| format!("{e:?}"))?;
    }
    s.rt.block_on(async {
        let ch = ep.connect().await.map_err(|e| format!("connect: {e:?}"))?;
        CapabilitiesClient::new(ch)
            .get_capabilities(reapi::GetCapabilitiesRequest::default())
            .await
            .map(|_| ())
            .map_err(|e| format!("rpc: {e:?}"))
    })
}

fn trusting(pki: &Pki) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost")
}

#[test]
fn tls_answers_clients_that_trust_the_ca_and_refuses_plain_text() {
    let pki = pki();
    let s = tls_server(&pki, false);
    capabilities_over(&s, Some(trusting(&pki))).unwrap();
    assert!(capabilities_over(&s, None).is_err());
    // A client that does not trust the CA (its own, unrelated one) refuses the server.
    let stranger = self::pki();
    assert!(capabilities_over(&s, Some(trusting(&stranger))).is_err());
    // Writes over TLS still need the token.
    let ep = Channel::from_shared(format!("https://{}", s.addr))
        .unwrap()
        .tls_config(trusting(&pki))
        .unwrap();
    let blob: &[u8] = b"over tls";
    let d = Digest::of(F, blob);
    let code = s.rt.block_on(async {
        let mut cas = ContentAddressableStorageClient::new(ep.connect().await.unwrap());
        let req = reapi::BatchUpdateBlobsRequest {
            requests: vec![reapi::batch_update_blobs_request::Request {
                digest: Some(d.to_proto()),
                data: blob.to_vec(),
                compressor: 0,
            }],
            digest_function: F.to_reapi(),
            ..Default::default()
        };
        let refused = cas
            .batch_update_blobs(req.clone())
            .await
            .unwrap_err()
            .code();
        cas.batch_update_blobs(authed(req, Some(TOKEN)))
            .await
            .unwrap();
        refused
    });
    assert_eq!(code, Code::Unauthenticated);
    assert!(s.store.has(&d));
}

#[test]
fn tls_client_ca_requires_a_client_certificate_signed_by_it() {
    let pki = pki();
    let s = tls_server(&pki, true);
    let err = capabilities_over(&s, Some(trusting(&pki))).unwrap_err();
    assert!(!err.is_empty());
    // A certificate from another CA is refused too.
    let stranger = self::pki();
    let foreign = Identity::from_pem(&stranger.client.0, &stranger.client.1);
    assert!(capabilities_over(&s, Some(trusting(&pki).identity(foreign))).is_err());
    let own = Identity::from_pem(&pki.client.0, &pki.client.1);
    capabilities_over(&s, Some(trusting(&pki).identity(own))).unwrap();
    assert!(capabilities_over(&s, None).is_err());
}

#[test]
fn bad_tls_files_stop_the_server_with_an_error() {
    let pki = pki();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let config = ServeConfig {
        token: Some(TOKEN.into()),
        tls: Some(TlsConfig {
            cert_pem: pki.server.0.into_bytes(),
            key_pem: b"not a key".to_vec(),
            client_ca_pem: None,
        }),
        ..Default::default()
    };
    let r = rt.block_on(serve(store, listener, config, async {}));
    let err = r.unwrap_err();
    assert!(matches!(err, RemoteError::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("PEM"), "{err}");
}

#[test]
fn a_token_in_clear_text_off_loopback_is_warned_about() {
    let with_token = ServeConfig {
        token: Some(TOKEN.into()),
        ..Default::default()
    };
    let public: std::net::SocketAddr = "0.0.0.0:50051".parse().unwrap();
    let loopback: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap();
    let w = with_token.cleartext_token_warning(public).unwrap();
    assert!(w.contains("clear text") && w.contains("--tls-cert"), "{w}");
    assert!(with_token.cleartext_token_warning(loopback).is_none());
    let tls = ServeConfig {
        tls: Some(TlsConfig {
            cert_pem: Vec::new(),
            key_pem: Vec::new(),
            client_ca_pem: None,
        }),
        ..with_token.clone()
    };
    assert!(tls.cleartext_token_warning(public).is_none());
    let anonymous = ServeConfig {
        allow_anonymous_writes: true,
        ..Default::default()
    };
    assert!(anonymous.cleartext_token_warning(public).is_none());
}
