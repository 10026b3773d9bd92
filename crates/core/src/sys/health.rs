//! `sys/health`: Vault's status codes and query parameters, for load balancers and monitors.

use serde_json::json;

use crate::core::Core;
use crate::logical::fields::{get_bool, get_u64};
use crate::logical::{LogicalError, Request, Response, Result};
use crate::time_util::now_unix;

impl Core {
    pub(crate) async fn sys_health(&self, req: &Request) -> Result<Response> {
        let code = |name: &str, default: u16| -> Result<u16> {
            match get_u64(&req.data, name)? {
                None => Ok(default),
                Some(c) if (100..=599).contains(&c) => Ok(c as u16),
                Some(_) => Err(LogicalError::InvalidRequest(format!(
                    "{name} must be a valid HTTP status code"
                ))),
            }
        };
        let initialized = self.is_initialized().await?;
        let sealed = self.is_sealed();
        let dr_mode = self.dr_mode();
        let standby = initialized && self.is_standby();
        let standby_ok = get_bool(&req.data, "standbyok")?.unwrap_or(false);
        // Bunker has no performance standbys; the parameter is checked and has no effect.
        let _ = get_bool(&req.data, "perfstandbyok")?;
        // Vault's order: not initialised, sealed, then DR secondary.
        let status = if !initialized {
            code("uninitcode", 501)?
        } else if sealed {
            code("sealedcode", 503)?
        } else if dr_mode == crate::DrMode::Secondary {
            code("drsecondarycode", 472)?
        } else if standby && !standby_ok {
            code("standbycode", 429)?
        } else {
            code("activecode", 200)?
        };
        let info = self
            .cluster
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let body = json!({
            "initialized": initialized,
            "sealed": sealed,
            // As Vault: a sealed node reports itself a standby.
            "standby": standby || (initialized && sealed),
            "performance_standby": false,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": dr_mode.as_str(),
            "server_time_utc": now_unix(),
            "version": super::seal::VERSION,
            "enterprise": false,
            "cluster_name": if sealed { String::new() } else { info.cluster_name },
            "cluster_id": if sealed { String::new() } else { info.cluster_id },
            "echo_duration_ms": 0,
            "clock_skew_ms": 0,
        });
        Ok(Response::raw(status, body))
    }
}
