//! Remote execution against an engine that stops talking: an `Execute` stream that names the
//! operation and then stays silent (as BuildGrid does when its job notifier is down). The
//! client must find the result by polling the operation, and give up on one that is never
//! done, instead of waiting forever.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    capabilities_server::{Capabilities, CapabilitiesServer},
    execution_server::{Execution, ExecutionServer},
};
use bazel_remote_apis::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest, operation,
    operations_server::{Operations, OperationsServer},
};
use bazel_remote_apis::google::protobuf::Empty;
use prost::Message;
use tonic::{Request, Response, Status};
use wbuild_remote::{RemoteCache, reapi};
use wbuild_store::{Digest, DigestFunction};

type OpStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Operation, Status>> + Send>>;

/// An engine whose operation streams send the operation once, not done, and then nothing.
/// `GetOperation` reports it done from the `done_after`-th poll on (never with `u32::MAX`).
#[derive(Clone)]
struct SilentEngine {
    polls: Arc<AtomicU32>,
    done_after: u32,
    /// Calls to Execute, WaitExecution and GetOperation that carried no `authorization`.
    anonymous: Arc<AtomicU32>,
}

impl SilentEngine {
    fn new(done_after: u32) -> SilentEngine {
        SilentEngine {
            polls: Arc::default(),
            done_after,
            anonymous: Arc::default(),
        }
    }

    fn note<T>(&self, req: &Request<T>) {
        if req.metadata().get("authorization").is_none() {
            self.anonymous.fetch_add(1, Ordering::SeqCst);
        }
    }
}

const OP: &str = "operations/silent-1";

fn pending() -> Operation {
    Operation {
        name: OP.to_owned(),
        done: false,
        ..Default::default()
    }
}

/// A stream that yields `pending()` and then stays open without another message.
fn silent_stream() -> OpStream {
    Box::pin(tokio_stream::StreamExt::chain(
        tokio_stream::iter([Ok(pending())]),
        tokio_stream::pending(),
    ))
}

#[tonic::async_trait]
impl Execution for SilentEngine {
    type ExecuteStream = OpStream;
    type WaitExecutionStream = OpStream;

    async fn execute(
        &self,
        req: Request<reapi::ExecuteRequest>,
    ) -> Result<Response<OpStream>, Status> {
        self.note(&req);
        Ok(Response::new(silent_stream()))
    }

    async fn wait_execution(
        &self,
        req: Request<reapi::WaitExecutionRequest>,
    ) -> Result<Response<OpStream>, Status> {
        self.note(&req);
        Ok(Response::new(silent_stream()))
    }
}

#[tonic::async_trait]
impl Operations for SilentEngine {
    async fn list_operations(
        &self,
        _req: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        Err(Status::unimplemented("list"))
    }

    async fn get_operation(
        &self,
        req: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        self.note(&req);
        assert_eq!(req.get_ref().name, OP);
        let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
        if n < self.done_after {
            return Ok(Response::new(pending()));
        }
        let response = reapi::ExecuteResponse {
            result: Some(reapi::ActionResult {
                exit_code: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(Response::new(Operation {
            name: OP.to_owned(),
            done: true,
            result: Some(operation::Result::Response(
                bazel_remote_apis::google::protobuf::Any {
                    type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
                        .to_owned(),
                    value: response.encode_to_vec(),
                },
            )),
            ..Default::default()
        }))
    }

    async fn delete_operation(
        &self,
        _req: Request<DeleteOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("delete"))
    }

    async fn cancel_operation(
        &self,
        _req: Request<CancelOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }

    async fn wait_operation(
        &self,
        _req: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        Err(Status::unimplemented("wait"))
    }
}

#[tonic::async_trait]
impl Capabilities for SilentEngine {
    async fn get_capabilities(
        &self,
        _req: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        Ok(Response::new(reapi::ServerCapabilities {
            cache_capabilities: Some(reapi::CacheCapabilities {
                digest_functions: vec![DigestFunction::Sha256.to_reapi()],
                ..Default::default()
            }),
            execution_capabilities: Some(reapi::ExecutionCapabilities {
                exec_enabled: true,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

/// Starts the engine on a loopback port (on its own runtime) and returns its URL.
fn start(engine: SilentEngine) -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("grpc://{}", listener.local_addr().unwrap());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(ExecutionServer::new(engine.clone()))
            .add_service(OperationsServer::new(engine.clone()))
            .add_service(CapabilitiesServer::new(engine))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (rt, url)
}

fn some_action() -> Digest {
    Digest::of(DigestFunction::Sha256, b"an action")
}

#[test]
fn a_result_the_stream_never_delivers_is_found_by_polling_the_operation() {
    let engine = SilentEngine::new(2);
    let (_rt, url) = start(engine.clone());
    // Every execution call carries the credentials, as the cache calls do.
    let options = wbuild_remote::ConnectOptions {
        headers: vec![("authorization".to_owned(), "Bearer t0ken".to_owned())],
        ..Default::default()
    };
    let remote = RemoteCache::connect_with(&url, "", &options).unwrap();
    let executed = remote.execute(&some_action(), None).unwrap();
    assert_eq!(executed.operation, OP);
    assert_eq!(executed.response.result.unwrap().exit_code, 7);
    assert_eq!(
        engine.polls.load(Ordering::SeqCst),
        2,
        "polled until done, then stopped"
    );
    assert_eq!(engine.anonymous.load(Ordering::SeqCst), 0);
}

#[test]
fn an_operation_that_is_never_done_is_given_up_at_the_deadline() {
    let engine = SilentEngine::new(u32::MAX);
    let polls = engine.polls.clone();
    let (_rt, url) = start(engine);
    let remote = RemoteCache::connect(&url, "").unwrap();
    remote.set_execution_deadline(Duration::from_secs(12));
    let t0 = Instant::now();
    let err = remote.execute(&some_action(), None).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("was not done after 12 s"), "{text}");
    assert!(
        t0.elapsed() >= Duration::from_secs(12),
        "{:?}",
        t0.elapsed()
    );
    // Polled on each silence before the deadline.
    assert!(
        polls.load(Ordering::SeqCst) >= 2,
        "{}",
        polls.load(Ordering::SeqCst)
    );
}
