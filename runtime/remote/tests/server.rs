//! `serve` over a real store on a loopback port, driven by the generated tonic clients.

mod common;

use tonic::Code;
use tonic::transport::Channel;
use wbuild_remote::grpc::bytestream::{ReadRequest, WriteRequest};
use wbuild_remote::grpc::{
    action_cache_client::ActionCacheClient, byte_stream_client::ByteStreamClient,
    capabilities_client::CapabilitiesClient,
    content_addressable_storage_client::ContentAddressableStorageClient,
};
use wbuild_remote::{ServeConfig, reapi};
use wbuild_store::{Digest, DigestFunction};

use common::Server;

const TOKEN: &str = "s3cret-token";

/// A server with `token`; without one, writes are open (as with --allow-anonymous-writes).
fn start(token: Option<&str>) -> Server {
    Server::start(ServeConfig {
        token: token.map(str::to_owned),
        allow_anonymous_writes: token.is_none(),
        ..Default::default()
    })
}

fn upload(
    s: &Server,
    cas: &mut ContentAddressableStorageClient<Channel>,
    f: DigestFunction,
    blobs: &[(&Digest, &[u8])],
) -> Vec<(i32, String)> {
    let req = reapi::BatchUpdateBlobsRequest {
        requests: blobs
            .iter()
            .map(|(d, data)| reapi::batch_update_blobs_request::Request {
                digest: Some(d.to_proto()),
                data: data.to_vec(),
                compressor: 0,
            })
            .collect(),
        digest_function: f.to_reapi(),
        ..Default::default()
    };
    let mut req = tonic::Request::new(req);
    if let Some(t) = &s.token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    s.rt.block_on(cas.batch_update_blobs(req))
        .unwrap()
        .into_inner()
        .responses
        .into_iter()
        .map(|r| {
            let st = r.status.unwrap();
            (st.code, st.message)
        })
        .collect()
}

#[test]
fn capabilities_list_both_digest_functions() {
    let s = start(None);
    let mut caps = CapabilitiesClient::new(s.channel());
    let c =
        s.rt.block_on(caps.get_capabilities(reapi::GetCapabilitiesRequest::default()))
            .unwrap()
            .into_inner();
    let cache = c.cache_capabilities.unwrap();
    // An empty cache prefers BLAKE3.
    assert_eq!(
        cache.digest_functions,
        [
            DigestFunction::Blake3.to_reapi(),
            DigestFunction::Sha256.to_reapi()
        ]
    );
    assert!(
        cache
            .action_cache_update_capabilities
            .unwrap()
            .update_enabled
    );
    assert_eq!(cache.max_batch_total_size_bytes, 4 << 20);
    assert_eq!(c.high_api_version.unwrap().major, 2);
}

#[test]
fn cas_round_trip_for_both_functions_and_poisoned_uploads_are_refused() {
    let s = start(None);
    let mut cas = ContentAddressableStorageClient::new(s.channel());
    for f in [DigestFunction::Sha256, DigestFunction::Blake3] {
        let a = Digest::of(f, b"alpha");
        let b = Digest::of(f, b"beta");
        let missing = |cas: &mut ContentAddressableStorageClient<Channel>| {
            s.rt.block_on(cas.find_missing_blobs(reapi::FindMissingBlobsRequest {
                blob_digests: vec![a.to_proto(), b.to_proto()],
                digest_function: f.to_reapi(),
                ..Default::default()
            }))
            .unwrap()
            .into_inner()
            .missing_blob_digests
        };
        assert_eq!(missing(&mut cas).len(), 2);
        // The right bytes for `a`; wrong bytes for `b`'s digest.
        let st = upload(&s, &mut cas, f, &[(&a, b"alpha"), (&b, b"gamma")]);
        assert_eq!(st[0].0, Code::Ok as i32, "{st:?}");
        assert_eq!(st[1].0, Code::InvalidArgument as i32, "{st:?}");
        assert!(st[1].1.contains("hash to"), "{st:?}");
        assert_eq!(missing(&mut cas), vec![b.to_proto()]);
        let read =
            s.rt.block_on(cas.batch_read_blobs(reapi::BatchReadBlobsRequest {
                digests: vec![a.to_proto(), b.to_proto()],
                digest_function: f.to_reapi(),
                ..Default::default()
            }))
            .unwrap()
            .into_inner()
            .responses;
        assert_eq!(read[0].data, b"alpha");
        assert_eq!(read[1].status.as_ref().unwrap().code, Code::NotFound as i32);
    }
    // Over the batch limit: refused as a whole.
    let big = vec![7u8; (4 << 20) + 1];
    let d = Digest::of(DigestFunction::Sha256, &big);
    let err =
        s.rt.block_on(cas.batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![reapi::batch_update_blobs_request::Request {
                digest: Some(d.to_proto()),
                data: big,
                compressor: 0,
            }],
            ..Default::default()
        }))
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::InvalidArgument | Code::OutOfRange),
        "{err:?}"
    );
}

#[test]
fn bytestream_writes_and_reads_large_blobs_and_refuses_wrong_bytes() {
    let s = start(None);
    let mut bs = ByteStreamClient::new(s.channel());
    let data: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
    for f in [DigestFunction::Sha256, DigestFunction::Blake3] {
        let d = Digest::of(f, &data);
        let seg = if f == DigestFunction::Sha256 {
            String::new()
        } else {
            format!("{}/", f.name())
        };
        let write = |bytes: Vec<u8>| {
            let name = format!("uploads/0c5e-4b1d/blobs/{seg}{}/{}", d.hex(), d.size);
            let chunks: Vec<WriteRequest> = bytes
                .chunks(1 << 20)
                .enumerate()
                .map(|(i, c)| WriteRequest {
                    resource_name: if i == 0 { name.clone() } else { String::new() },
                    write_offset: (i << 20) as i64,
                    finish_write: (i + 1) << 20 >= bytes.len(),
                    data: c.to_vec(),
                })
                .collect();
            let mut bs = bs.clone();
            s.rt.block_on(async move { bs.write(tokio_stream::iter(chunks)).await })
        };
        let mut wrong = data.clone();
        wrong[12345] ^= 1;
        let err = write(wrong).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let ok = write(data.clone()).unwrap().into_inner();
        assert_eq!(ok.committed_size, d.size as i64);
        let mut stream =
            s.rt.block_on(bs.read(ReadRequest {
                resource_name: format!("blobs/{seg}{}/{}", d.hex(), d.size),
                read_offset: 0,
                read_limit: 0,
            }))
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(msg) = s.rt.block_on(stream.message()).unwrap() {
            got.extend_from_slice(&msg.data);
        }
        assert!(got == data, "read back {} bytes", got.len());
    }
}

#[test]
fn action_cache_writes_need_the_token_and_every_output_blob() {
    let s = start(Some(TOKEN));
    let mut cas = ContentAddressableStorageClient::new(s.channel());
    let ac = ActionCacheClient::new(s.channel());
    let f = DigestFunction::Sha256;
    let action = Digest::of(f, b"an action");
    let out = Digest::of(f, b"output bytes");
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "out.txt".into(),
            digest: Some(out.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let update = |token: Option<&str>| {
        let mut req = tonic::Request::new(reapi::UpdateActionResultRequest {
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            digest_function: f.to_reapi(),
            ..Default::default()
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let mut ac = ac.clone();
        s.rt.block_on(async move { ac.update_action_result(req).await })
    };
    assert_eq!(update(None).unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        update(Some("guess")).unwrap_err().code(),
        Code::PermissionDenied
    );
    // Authorised, but the output blob is not in the CAS yet.
    let err = update(Some(TOKEN)).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let get = |ac: &mut ActionCacheClient<Channel>| {
        s.rt.block_on(ac.get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            digest_function: f.to_reapi(),
            ..Default::default()
        }))
    };
    let mut reader = ActionCacheClient::new(s.channel());
    assert_eq!(get(&mut reader).unwrap_err().code(), Code::NotFound);
    let st = upload(&s, &mut cas, f, &[(&out, b"output bytes")]);
    assert_eq!(st[0].0, Code::Ok as i32);
    update(Some(TOKEN)).unwrap();
    // Reads are anonymous.
    let got = get(&mut reader).unwrap().into_inner();
    assert_eq!(got.output_files[0].digest, Some(out.to_proto()));
    assert!(got.output_files[0].contents.is_empty());
    // Asked to inline the output: its bytes come with the result, and check out.
    let mut inlined =
        s.rt.block_on(reader.get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            inline_output_files: vec!["out.txt".into()],
            digest_function: f.to_reapi(),
            ..Default::default()
        }))
        .unwrap()
        .into_inner();
    assert_eq!(inlined.output_files[0].contents, b"output bytes");
    let blobs = wbuild_remote::take_inlined(&mut inlined, f).unwrap();
    assert_eq!(blobs, vec![(out, b"output bytes".to_vec())]);
    assert!(inlined.output_files[0].contents.is_empty());
    // Inlined bytes that do not match their digest are refused.
    inlined.output_files[0].contents = b"forged bytes".to_vec();
    assert!(wbuild_remote::take_inlined(&mut inlined, f).is_err());
}

#[test]
fn get_tree_returns_every_directory() {
    let s = start(None);
    let mut cas = ContentAddressableStorageClient::new(s.channel());
    let f = DigestFunction::Blake3;
    use prost::Message;
    let leaf = reapi::Directory::default().encode_to_vec();
    let leaf_d = Digest::of(f, &leaf);
    let root = reapi::Directory {
        directories: vec![reapi::DirectoryNode {
            name: "sub".into(),
            digest: Some(leaf_d.to_proto()),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let root_d = Digest::of(f, &root);
    upload(&s, &mut cas, f, &[(&leaf_d, &leaf), (&root_d, &root)]);
    let mut stream =
        s.rt.block_on(cas.get_tree(reapi::GetTreeRequest {
            root_digest: Some(root_d.to_proto()),
            digest_function: f.to_reapi(),
            ..Default::default()
        }))
        .unwrap()
        .into_inner();
    let mut dirs = Vec::new();
    while let Some(page) = s.rt.block_on(stream.message()).unwrap() {
        dirs.extend(page.directories);
    }
    assert_eq!(dirs.len(), 2);
    assert_eq!(dirs[0].directories[0].name, "sub");
}

/// Found by the `reapi_server` fuzz target: the store names blobs by hash alone, and a digest
/// with the right hash but another size was answered with the blob's bytes (of another
/// length than the digest says). Such a digest names no blob.
#[test]
fn a_digest_with_the_wrong_size_names_no_blob() {
    let s = start(None);
    let mut cas = ContentAddressableStorageClient::new(s.channel());
    let mut bs = ByteStreamClient::new(s.channel());
    let f = DigestFunction::Blake3;
    let d = Digest::of(f, b"sized bytes");
    assert_eq!(
        upload(&s, &mut cas, f, &[(&d, b"sized bytes")])[0].0,
        Code::Ok as i32
    );
    let wrong = Digest {
        size: d.size + 1,
        ..d
    };
    let read =
        s.rt.block_on(cas.batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: vec![d.to_proto(), wrong.to_proto()],
            digest_function: f.to_reapi(),
            ..Default::default()
        }))
        .unwrap()
        .into_inner()
        .responses;
    assert_eq!(read[0].data, b"sized bytes");
    assert_eq!(read[1].status.as_ref().unwrap().code, Code::NotFound as i32);
    assert!(read[1].data.is_empty());
    let err =
        s.rt.block_on(bs.read(ReadRequest {
            resource_name: format!("blobs/blake3/{}/{}", wrong.hex(), wrong.size),
            read_offset: 0,
            read_limit: 0,
        }))
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

/// Found by the `reapi_server` fuzz target: bytes an uploader sent inline with an action
/// result (`stdout_raw`, `OutputFile.contents`) were served back to every reader as they
/// were, unchecked against the digests. Only bytes read from the CAS are inlined now.
#[test]
fn uploaded_inline_bytes_are_never_served() {
    let s = start(None);
    let mut cas = ContentAddressableStorageClient::new(s.channel());
    let mut ac = ActionCacheClient::new(s.channel());
    let f = DigestFunction::Blake3;
    let action = Digest::of(f, b"an action with inline bytes");
    let out = Digest::of(f, b"real output");
    let log = Digest::of(f, b"real stdout");
    let st = upload(
        &s,
        &mut cas,
        f,
        &[(&out, b"real output"), (&log, b"real stdout")],
    );
    assert!(st.iter().all(|(c, _)| *c == Code::Ok as i32), "{st:?}");
    let forged = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "out".into(),
            digest: Some(out.to_proto()),
            contents: b"forged output".to_vec(),
            ..Default::default()
        }],
        stdout_digest: Some(log.to_proto()),
        stdout_raw: b"forged stdout".to_vec(),
        stderr_raw: b"stderr without a digest".to_vec(),
        ..Default::default()
    };
    s.rt.block_on(ac.update_action_result(reapi::UpdateActionResultRequest {
        action_digest: Some(action.to_proto()),
        action_result: Some(forged),
        digest_function: f.to_reapi(),
        ..Default::default()
    }))
    .unwrap();
    let get = |ac: &mut ActionCacheClient<Channel>, inline: bool| {
        s.rt.block_on(ac.get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            inline_stdout: inline,
            inline_stderr: inline,
            inline_output_files: if inline { vec!["out".into()] } else { vec![] },
            digest_function: f.to_reapi(),
            ..Default::default()
        }))
        .unwrap()
        .into_inner()
    };
    let plain = get(&mut ac, false);
    assert!(plain.stdout_raw.is_empty() && plain.stderr_raw.is_empty());
    assert!(plain.output_files[0].contents.is_empty());
    let inlined = get(&mut ac, true);
    assert_eq!(inlined.stdout_raw, b"real stdout");
    assert!(inlined.stderr_raw.is_empty());
    assert_eq!(inlined.output_files[0].contents, b"real output");
}

/// A cache whose action cache was filled with SHA-256 keys (through a SHA-256 remote such as
/// BuildGrid) lists SHA-256 first, and a wbuild client then uses SHA-256 with it and finds
/// those entries; an empty or BLAKE3-filled one keeps BLAKE3.
#[test]
fn the_digest_function_most_entries_use_is_offered_first_and_the_client_takes_it() {
    use wbuild_remote::RemoteCache;
    for (fill, sha, blake, want) in [
        ("empty", 0, 0, DigestFunction::Blake3),
        ("sha256", 3, 1, DigestFunction::Sha256),
        ("blake3", 1, 2, DigestFunction::Blake3),
    ] {
        let s = start(None);
        let result = reapi::ActionResult::default();
        for (f, n) in [
            (DigestFunction::Sha256, sha),
            (DigestFunction::Blake3, blake),
        ] {
            for i in 0..n {
                let action = Digest::of(f, format!("action {i}").as_bytes());
                s.store.ac_put(&action, &result, "//p:t").unwrap();
            }
        }
        assert_eq!(
            s.store.ac_entries_by_function().unwrap(),
            [
                (DigestFunction::Blake3, blake as u64),
                (DigestFunction::Sha256, sha as u64)
            ],
            "{fill}"
        );
        let url = format!("grpc://{}", s.addr);
        let client =
            std::thread::spawn(move || RemoteCache::connect(&url, "").map(|c| c.function()))
                .join()
                .unwrap()
                .unwrap();
        assert_eq!(client, want, "{fill}");
        // A SHA-256-filled cache serves its entry to that client.
        if want == DigestFunction::Sha256 {
            let action = Digest::of(want, b"action 0");
            let mut ac = ActionCacheClient::new(s.channel());
            let got =
                s.rt.block_on(ac.get_action_result(reapi::GetActionResultRequest {
                    action_digest: Some(action.to_proto()),
                    digest_function: client.to_reapi(),
                    ..Default::default()
                }));
            assert!(got.is_ok(), "{got:?}");
        }
    }
}

#[test]
fn the_client_takes_the_first_function_it_supports_in_the_servers_order() {
    use wbuild_remote::choose_function;
    let (sha, blake) = (
        DigestFunction::Sha256.to_reapi(),
        DigestFunction::Blake3.to_reapi(),
    );
    const MD5: i32 = 2;
    assert_eq!(choose_function(&[]).unwrap(), DigestFunction::Sha256);
    assert_eq!(
        choose_function(&[sha, blake]).unwrap(),
        DigestFunction::Sha256
    );
    assert_eq!(
        choose_function(&[blake, sha]).unwrap(),
        DigestFunction::Blake3
    );
    assert_eq!(
        choose_function(&[MD5, blake]).unwrap(),
        DigestFunction::Blake3
    );
    assert!(choose_function(&[MD5]).is_err());
}
