//! `GetTree` from an engine that lies (what a worker fetches an input tree with): directories
//! are named by the digest of their own encoding, never by what the server claims, a tree
//! larger than the limit is refused instead of filling memory, and pages that never end are
//! not followed forever.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    capabilities_server::{Capabilities, CapabilitiesServer},
    content_addressable_storage_server::{
        ContentAddressableStorage, ContentAddressableStorageServer,
    },
};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};
use wbuild_remote::{RemoteCache, reapi};
use wbuild_store::{Digest, DigestFunction};

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// What the fake engine's `GetTree` answers.
#[derive(Clone, Copy)]
enum Answer {
    /// The root, then a directory nobody asked for, in one page.
    ForgedExtra,
    /// One directory per page and a new page token each time, forever.
    EndlessPages,
    /// A page whose next token is the one just asked for.
    SameToken,
}

#[derive(Clone)]
struct Engine {
    answer: Answer,
    calls: Arc<AtomicU32>,
}

fn dir(name: &str) -> reapi::Directory {
    reapi::Directory {
        files: vec![reapi::FileNode {
            name: name.to_owned(),
            digest: Some(Digest::of(DigestFunction::Sha256, name.as_bytes()).to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tonic::async_trait]
impl ContentAddressableStorage for Engine {
    async fn find_missing_blobs(
        &self,
        _req: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        Err(Status::unimplemented("find"))
    }

    async fn batch_update_blobs(
        &self,
        _req: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        Err(Status::unimplemented("update"))
    }

    async fn batch_read_blobs(
        &self,
        _req: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        Err(Status::unimplemented("read"))
    }

    type GetTreeStream = Stream<reapi::GetTreeResponse>;

    async fn get_tree(
        &self,
        req: Request<reapi::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let token = req.into_inner().page_token;
        let page = match self.answer {
            Answer::ForgedExtra => reapi::GetTreeResponse {
                directories: vec![dir("root"), dir("forged")],
                next_page_token: String::new(),
            },
            Answer::EndlessPages => reapi::GetTreeResponse {
                directories: vec![dir(&format!("d{n}"))],
                next_page_token: format!("page-{}", n + 1),
            },
            Answer::SameToken => reapi::GetTreeResponse {
                directories: vec![dir("again")],
                next_page_token: if token.is_empty() {
                    "stuck".to_owned()
                } else {
                    token
                },
            },
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(page)]))))
    }

    async fn split_blob(
        &self,
        _req: Request<reapi::SplitBlobRequest>,
    ) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        Err(Status::unimplemented("split"))
    }

    type GetChunkMappingStream = Stream<reapi::GetChunkMappingResponse>;

    async fn get_chunk_mapping(
        &self,
        _req: Request<reapi::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(Status::unimplemented("chunks"))
    }

    async fn splice_blob(
        &self,
        _req: Request<reapi::SpliceBlobRequest>,
    ) -> Result<Response<reapi::SpliceBlobResponse>, Status> {
        Err(Status::unimplemented("splice"))
    }

    async fn register_chunk_mapping(
        &self,
        _req: Request<Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        Err(Status::unimplemented("register"))
    }
}

#[tonic::async_trait]
impl Capabilities for Engine {
    async fn get_capabilities(
        &self,
        _req: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        Ok(Response::new(reapi::ServerCapabilities {
            cache_capabilities: Some(reapi::CacheCapabilities {
                digest_functions: vec![DigestFunction::Sha256.to_reapi()],
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

fn connect(answer: Answer) -> (tokio::runtime::Runtime, RemoteCache, Arc<AtomicU32>) {
    let engine = Engine {
        answer,
        calls: Arc::default(),
    };
    let calls = engine.calls.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("grpc://{}", listener.local_addr().unwrap());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(ContentAddressableStorageServer::new(engine.clone()))
            .add_service(CapabilitiesServer::new(engine))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let remote = RemoteCache::connect(&url, "").unwrap();
    (rt, remote, calls)
}

#[test]
fn directories_are_named_by_their_own_encoding() {
    let (_rt, remote, _) = connect(Answer::ForgedExtra);
    let root = Digest::of(DigestFunction::Sha256, &dir("root").encode_to_vec());
    let got = remote.get_tree(&root, 100).unwrap();
    for (d, msg) in &got {
        assert_eq!(*d, Digest::of(DigestFunction::Sha256, &msg.encode_to_vec()));
    }
    // The forged directory is there under its own digest, which nothing under the root
    // names: a walk from the root never reaches it.
    assert_eq!(got.len(), 2);
    assert!(got.iter().any(|(d, _)| *d == root));
}

#[test]
fn a_tree_beyond_the_limit_is_refused_and_endless_pages_end() {
    let (_rt, remote, calls) = connect(Answer::EndlessPages);
    let root = Digest::of(DigestFunction::Sha256, b"whatever");
    let err = remote.get_tree(&root, 50).unwrap_err().to_string();
    assert!(err.contains("more than 50 directories"), "{err}");
    assert!(calls.load(Ordering::SeqCst) <= 52);

    let (_rt, remote, calls) = connect(Answer::SameToken);
    let got = remote.get_tree(&root, 50).unwrap();
    assert_eq!(
        got.len(),
        2,
        "the first page and the repeated one, then it stops"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
