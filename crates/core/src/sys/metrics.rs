//! `sys/metrics`: storage durability counters (fsyncs, batches, ops) and request counts, as
//! JSON or, with `format=prometheus`, in the Prometheus text format.

use std::sync::atomic::Ordering;

use serde_json::json;

use super::expect_op;
use crate::core::Core;
use crate::logical::fields::get_str;
use crate::logical::{Operation, RawResponse, Request, Response, Result};

impl Core {
    pub(crate) fn sys_metrics(&self, req: &Request) -> Result<Response> {
        expect_op(req.operation, &[Operation::Read])?;
        let storage = self.storage_metrics();
        let requests = self.requests_total.load(Ordering::Relaxed);
        let gauges = [
            (
                "bunker_storage_fsyncs_total",
                "Durable commits (fsyncs) issued by the storage backend.",
                storage.fsyncs,
            ),
            (
                "bunker_storage_batches_total",
                "Write batches acknowledged by the storage backend.",
                storage.batches,
            ),
            (
                "bunker_storage_ops_total",
                "Put and delete operations committed.",
                storage.ops,
            ),
            ("bunker_requests_total", "API requests handled.", requests),
        ];
        if get_str(&req.data, "format")?.as_deref() == Some("prometheus") {
            let mut text = String::new();
            for (name, help, value) in gauges {
                text.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
                ));
            }
            return Ok(Response {
                raw: Some(RawResponse {
                    status: 200,
                    body: json!(text),
                    content_type: Some("text/plain; version=0.0.4"),
                }),
                ..Default::default()
            });
        }
        let counters: Vec<_> = gauges
            .iter()
            .map(|(name, _, value)| json!({"Name": name, "Count": value}))
            .collect();
        Ok(Response::raw(
            200,
            json!({"Counters": counters, "Gauges": [], "Samples": [], "Timestamp": crate::time_util::now_rfc3339()}),
        ))
    }
}
