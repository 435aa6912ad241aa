//! The Remote Workers API (`google.devtools.remoteworkers.v1test2`, "Bots") that REAPI
//! engines such as BuildGrid and Buildbarn use to hand work to workers: the messages a
//! worker exchanges and a gRPC client for `CreateBotSession` / `UpdateBotSession`.
//!
//! `bazel-remote-apis`, the REAPI bindings wbuild uses, does not carry this API. The crate
//! `googleapis-tonic-google-devtools-remoteworkers-v1test2` does, but over its own
//! `google.protobuf`/`google.rpc` types, which every lease would have to be converted from and
//! to; so the messages are declared here with `prost` derives over `bazel-remote-apis`'s
//! `Any`, `Timestamp` and `Status`, field for field (names, numbers and types) as in
//! `google/devtools/remoteworkers/v1test2/{bots,worker}.proto`.

use bazel_remote_apis::google::protobuf::{Any, Timestamp};
use bazel_remote_apis::google::rpc::Status;
use tonic::codegen::http::uri::PathAndQuery;

/// A worker's session with the engine: who it is, what it can run, and its leases.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BotSession {
    /// Set by the engine on creation; echoed back on every update.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Set by the worker; stable across restarts of the same worker.
    #[prost(string, tag = "2")]
    pub bot_id: String,
    #[prost(enumeration = "BotStatus", tag = "3")]
    pub status: i32,
    #[prost(message, optional, tag = "4")]
    pub worker: Option<Worker>,
    #[prost(message, repeated, tag = "5")]
    pub leases: Vec<Lease>,
    #[prost(message, optional, tag = "6")]
    pub expire_time: Option<Timestamp>,
    #[prost(string, tag = "7")]
    pub version: String,
}

/// One unit of work assigned to a worker.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Lease {
    #[prost(string, tag = "7")]
    pub id: String,
    /// What to do: a REAPI `Action` or the `Digest` of one.
    #[prost(message, optional, tag = "8")]
    pub payload: Option<Any>,
    /// What came of it: a REAPI `ActionResult`.
    #[prost(message, optional, tag = "9")]
    pub result: Option<Any>,
    #[prost(enumeration = "LeaseState", tag = "2")]
    pub state: i32,
    #[prost(message, optional, tag = "3")]
    pub status: Option<Status>,
    #[prost(message, optional, tag = "4")]
    pub requirements: Option<Worker>,
    #[prost(message, optional, tag = "5")]
    pub expire_time: Option<Timestamp>,
    #[prost(string, tag = "1")]
    pub assignment: String,
    #[prost(message, optional, tag = "6")]
    pub inline_assignment: Option<Any>,
}

/// What a worker offers: its devices (the first runs the commands) and configuration.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Worker {
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<Device>,
    #[prost(message, repeated, tag = "2")]
    pub properties: Vec<KeyValue>,
    /// `capacity`: how many leases it takes at once.
    #[prost(message, repeated, tag = "3")]
    pub configs: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Device {
    #[prost(string, tag = "1")]
    pub handle: String,
    /// Matched against actions' platform properties (`OSFamily`, `ISA`, ...).
    #[prost(message, repeated, tag = "2")]
    pub properties: Vec<KeyValue>,
}

/// `Worker.Property`, `Worker.Config` and `Device.Property` (all `key`/`value` strings).
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

impl KeyValue {
    pub fn new(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateBotSessionRequest {
    /// The instance name.
    #[prost(string, tag = "1")]
    pub parent: String,
    #[prost(message, optional, tag = "2")]
    pub bot_session: Option<BotSession>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateBotSessionRequest {
    /// The session's name (as the engine returned it).
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub bot_session: Option<BotSession>,
    #[prost(message, optional, tag = "3")]
    pub update_mask: Option<FieldMask>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FieldMask {
    #[prost(string, repeated, tag = "1")]
    pub paths: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum BotStatus {
    Unspecified = 0,
    Ok = 1,
    Unhealthy = 2,
    HostRebooting = 3,
    BotTerminating = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum LeaseState {
    Unspecified = 0,
    Pending = 1,
    Active = 2,
    Completed = 4,
    Cancelled = 5,
}

/// `type_url` of a packed REAPI message (`build.bazel.remote.execution.v2.<name>`).
pub fn reapi_type_url(name: &str) -> String {
    format!("type.googleapis.com/build.bazel.remote.execution.v2.{name}")
}

/// Packs `msg` as an `Any` of the REAPI type `name`.
pub fn pack_reapi(name: &str, msg: &impl prost::Message) -> Any {
    Any {
        type_url: reapi_type_url(name),
        value: msg.encode_to_vec(),
    }
}

/// The `Bots` service client.
#[derive(Clone)]
pub struct BotsClient {
    inner: tonic::client::Grpc<crate::AuthChannel>,
}

impl BotsClient {
    /// A client on `channel` ([`crate::RemoteCache::channel`]: with the remote's credentials).
    pub fn new(channel: crate::AuthChannel) -> BotsClient {
        BotsClient {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    async fn unary<Req, Resp>(
        &mut self,
        path: &'static str,
        request: tonic::Request<Req>,
    ) -> Result<tonic::Response<Resp>, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("the engine is not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::default();
        self.inner
            .unary(request, PathAndQuery::from_static(path), codec)
            .await
    }

    pub async fn create_bot_session(
        &mut self,
        request: tonic::Request<CreateBotSessionRequest>,
    ) -> Result<tonic::Response<BotSession>, tonic::Status> {
        self.unary(
            "/google.devtools.remoteworkers.v1test2.Bots/CreateBotSession",
            request,
        )
        .await
    }

    pub async fn update_bot_session(
        &mut self,
        request: tonic::Request<UpdateBotSessionRequest>,
    ) -> Result<tonic::Response<BotSession>, tonic::Status> {
        self.unary(
            "/google.devtools.remoteworkers.v1test2.Bots/UpdateBotSession",
            request,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn lease_fields_use_the_proto_numbers() {
        let lease = Lease {
            id: "op".into(),
            state: LeaseState::Active as i32,
            ..Default::default()
        };
        // id is field 7 (tag 0x3a), state field 2 (tag 0x10).
        assert_eq!(lease.encode_to_vec(), [0x10, 2, 0x3a, 2, b'o', b'p']);
        let back = Lease::decode(&lease.encode_to_vec()[..]).unwrap();
        assert_eq!(back, lease);
    }
}
