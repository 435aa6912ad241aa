//! Remote execution through any REAPI v2 engine: `Execute`, following the operation stream
//! (and `WaitExecution` when the stream drops), speculative resubmission of stragglers, and
//! `CancelOperation` for the loser.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bazel_remote_apis::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, Operation, operation,
    operations_client::OperationsClient,
};
use prost::Message;
use tonic::{Code, Status};
use wbuild_store::reapi::{self, execution_client::ExecutionClient};
use wbuild_store::{Digest, DigestFunction};

use crate::{ClientError, RemoteCache};

/// How often a dropped operation stream is re-joined with `WaitExecution` before giving up.
const REJOINS: u32 = 8;

/// How long an operation stream may stay silent before the operation is polled with
/// `GetOperation` (an engine that lost the update, e.g. BuildGrid with its job notifier down,
/// still answers it) and the stream re-joined.
pub const SILENCE: Duration = Duration::from_secs(5);

/// How long one `GetOperation` poll may take.
const POLL_DEADLINE: Duration = Duration::from_secs(10);

/// How long an operation may go without being done before the client gives up on it (the
/// scheduler then runs the action locally): the longest an action may run on a worker plus
/// time in the engine's queue. [`RemoteCache::set_execution_deadline`] changes it.
pub const DEFAULT_EXECUTION_DEADLINE: Duration = Duration::from_secs(30 * 60);

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
    /// How long [`RemoteCache::execute`] waits for an operation to be done before it gives
    /// up on it (default [`DEFAULT_EXECUTION_DEADLINE`]).
    pub fn set_execution_deadline(&self, deadline: Duration) {
        *self.exec_deadline.lock().expect("execution deadline") = deadline;
    }

    pub fn execute(
        &self,
        action: &Digest,
        resubmit: Option<Resubmission>,
    ) -> Result<Executed, ClientError> {
        // The authenticated channel: Execute, WaitExecution and the operation calls carry
        // the same headers and token as every other call.
        let ch = self.channel();
        let instance = self.instance.clone();
        let f = self.function;
        let action = *action;
        let deadline = *self.exec_deadline.lock().expect("execution deadline");
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
                deadline,
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
                deadline,
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
/// A stream silent for [`SILENCE`] has the operation polled (`GetOperation`) and is re-joined;
/// an operation not done within `deadline` is given up (`DEADLINE_EXCEEDED`).
async fn run_operation(
    ch: crate::AuthChannel,
    instance: String,
    f: DigestFunction,
    action: Digest,
    skip_cache_lookup: bool,
    name: Arc<Mutex<Option<String>>>,
    deadline: Duration,
) -> Result<(reapi::ExecuteResponse, String), ClientError> {
    let given_up = tokio::time::Instant::now() + deadline;
    let mut operations = OperationsClient::new(ch.clone());
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
        let next = match tokio::time::timeout_at(
            given_up.min(tokio::time::Instant::now() + SILENCE),
            stream.message(),
        )
        .await
        {
            Ok(next) => next,
            Err(_) => {
                let op_name = name.lock().expect("operation name").clone();
                if tokio::time::Instant::now() >= given_up {
                    return Err(ClientError::Rpc {
                        op: "Execute",
                        status: Status::deadline_exceeded(format!(
                            "operation {} was not done after {} s; giving up on it",
                            op_name.as_deref().unwrap_or("(unnamed)"),
                            deadline.as_secs()
                        )),
                    });
                }
                // Silence: ask for the operation itself, in case its update was lost.
                if let Some(op_name) = op_name {
                    let mut req = tonic::Request::new(GetOperationRequest {
                        name: op_name.clone(),
                    });
                    req.set_timeout(POLL_DEADLINE);
                    if let Ok(Ok(op)) =
                        tokio::time::timeout(POLL_DEADLINE, operations.get_operation(req)).await
                    {
                        let op = op.into_inner();
                        if op.done {
                            return finished(op).map(|r| (r, op_name));
                        }
                    }
                    // Not done: re-join, so a stream the engine forgot is replaced.
                    if let Ok(Ok(s)) = tokio::time::timeout(
                        POLL_DEADLINE,
                        client.wait_execution(reapi::WaitExecutionRequest { name: op_name }),
                    )
                    .await
                    {
                        stream = s.into_inner();
                    }
                }
                continue;
            }
        };
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
