//! Remote execution through any REAPI v2 engine: `Execute`, following the operation stream
//! (and `WaitExecution` when the stream drops), speculative resubmission of stragglers, and
//! `CancelOperation` for the loser.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bazel_remote_apis::google::longrunning::{
    CancelOperationRequest, Operation, operation, operations_client::OperationsClient,
};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status};
use wbuild_store::reapi::{self, execution_client::ExecutionClient};
use wbuild_store::{Digest, DigestFunction};

use crate::{ClientError, RemoteCache};

/// How often a dropped operation stream is re-joined with `WaitExecution` before giving up.
const REJOINS: u32 = 8;

/// What an engine made of an action.
#[derive(Debug)]
pub struct Executed {
    pub response: reapi::ExecuteResponse,
    /// The operation that delivered it.
    pub operation: String,
    /// Whether the speculative resubmission (not the first submission) delivered it.
    pub resubmitted: bool,
}

impl Executed {
    /// The worker that ran the action, as it reported itself.
    pub fn worker(&self) -> &str {
        self.response
            .result
            .as_ref()
            .and_then(|r| r.execution_metadata.as_ref())
            .map_or("", |m| m.worker.as_str())
    }
}

/// A second submission of an action: the same command and inputs under an `Action` marked
/// `do_not_cache`, so the engine queues it as a job of its own instead of joining it to the
/// running one.
pub struct Resubmission {
    /// The digest of the `do_not_cache` copy (already uploaded).
    pub action: Digest,
    /// How long the first may run without a result before the copy is submitted; asked
    /// again every [`TICK`] while it runs (`None`: not yet known).
    pub wait: Box<dyn Fn() -> Option<Duration> + Send + Sync>,
}

/// How often a running operation is checked for being a straggler.
pub const TICK: Duration = Duration::from_millis(100);

/// The `do_not_cache` copy of `action` for a speculative resubmission, serialised.
pub fn speculative_copy(action: &reapi::Action) -> Vec<u8> {
    let mut copy = action.clone();
    copy.do_not_cache = true;
    copy.encode_to_vec()
}

impl RemoteCache {
    /// Executes `action` (its `Action`, `Command` and inputs must be in the remote CAS) and
    /// waits for the result. With `resubmit`, a copy is submitted when the first runs longer
    /// than `resubmit.after`; the first result wins and the other operation is cancelled.
    pub fn execute(
        &self,
        action: &Digest,
        resubmit: Option<Resubmission>,
    ) -> Result<Executed, ClientError> {
        let ch = self.channel.clone();
        let instance = self.instance.clone();
        let f = self.function;
        let action = *action;
        self.rpcs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.rt.block_on(async move {
            let first_name = Arc::new(Mutex::new(None));
            let mut first = Box::pin(run_operation(
                ch.clone(),
                instance.clone(),
                f,
                action,
                false,
                first_name.clone(),
            ));
            let Some(resubmit) = resubmit else {
                return first.await.map(|(response, operation)| Executed {
                    response,
                    operation,
                    resubmitted: false,
                });
            };
            let t0 = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    r = &mut first => {
                        return r.map(|(response, operation)| Executed {
                            response,
                            operation,
                            resubmitted: false,
                        });
                    }
                    _ = tokio::time::sleep(TICK) => {}
                }
                if (resubmit.wait)().is_some_and(|w| t0.elapsed() >= w) {
                    break;
                }
            }
            let second_name = Arc::new(Mutex::new(None));
            let mut second = Box::pin(run_operation(
                ch.clone(),
                instance.clone(),
                f,
                resubmit.action,
                true,
                second_name.clone(),
            ));
            let (result, loser, resubmitted) = tokio::select! {
                r = &mut first => (r, second_name, false),
                r = &mut second => match r {
                    // The copy failed to run at all: wait for the original.
                    Err(_) => ((&mut first).await, second_name, false),
                    Ok(r) => (Ok(r), first_name, true),
                },
            };
            let loser = loser.lock().expect("operation name").clone();
            if let Some(name) = loser {
                // Best effort: the engine may already have finished it.
                let _ = OperationsClient::new(ch)
                    .cancel_operation(CancelOperationRequest { name })
                    .await;
            }
            result.map(|(response, operation)| Executed {
                response,
                operation,
                resubmitted,
            })
        })
    }
}

/// Submits `action` and follows its operation until it is done, re-joining a dropped stream
/// with `WaitExecution`. Records the operation name in `name` as soon as the engine names it.
async fn run_operation(
    ch: Channel,
    instance: String,
    f: DigestFunction,
    action: Digest,
    skip_cache_lookup: bool,
    name: Arc<Mutex<Option<String>>>,
) -> Result<(reapi::ExecuteResponse, String), ClientError> {
    let mut client = ExecutionClient::new(ch);
    let req = reapi::ExecuteRequest {
        instance_name: instance,
        skip_cache_lookup,
        action_digest: Some(action.to_proto()),
        digest_function: f.to_reapi(),
        ..Default::default()
    };
    let err = |op: &'static str| move |status: Status| ClientError::Rpc { op, status };
    let mut stream = client
        .execute(req)
        .await
        .map_err(err("Execute"))?
        .into_inner();
    let mut rejoins = 0;
    loop {
        let next = stream.message().await;
        match next {
            Ok(Some(op)) => {
                *name.lock().expect("operation name") = Some(op.name.clone());
                if op.done {
                    let op_name = op.name.clone();
                    return finished(op).map(|r| (r, op_name));
                }
                continue;
            }
            Ok(None) => {}
            Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) => {}
            Err(s) => return Err(err("Execute")(s)),
        }
        // The stream ended before the operation did: wait for it again.
        let Some(op_name) = name.lock().expect("operation name").clone() else {
            return Err(ClientError::Rpc {
                op: "Execute",
                status: Status::unavailable(
                    "the engine closed the stream before naming the operation",
                ),
            });
        };
        rejoins += 1;
        if rejoins > REJOINS {
            return Err(ClientError::Rpc {
                op: "WaitExecution",
                status: Status::unavailable(format!("lost operation {op_name} {REJOINS} times")),
            });
        }
        tokio::time::sleep(Duration::from_millis(100 * u64::from(rejoins))).await;
        stream = match client
            .wait_execution(reapi::WaitExecutionRequest { name: op_name })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) => continue,
            Err(s) => return Err(err("WaitExecution")(s)),
        };
    }
}

/// The `ExecuteResponse` of a finished operation.
fn finished(op: Operation) -> Result<reapi::ExecuteResponse, ClientError> {
    match op.result {
        Some(operation::Result::Response(any)) => reapi::ExecuteResponse::decode(&any.value[..])
            .map_err(|e| ClientError::Rpc {
                op: "Execute",
                status: Status::internal(format!("undecodable ExecuteResponse: {e}")),
            }),
        Some(operation::Result::Error(s)) => Err(ClientError::Rpc {
            op: "Execute",
            status: Status::new(Code::from(s.code), s.message),
        }),
        None => Err(ClientError::Rpc {
            op: "Execute",
            status: Status::internal("the operation finished without a response"),
        }),
    }
}
