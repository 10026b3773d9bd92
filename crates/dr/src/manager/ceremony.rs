//! Key-share ceremonies in progress on a DR secondary: promotion with the primary's unseal
//! keys, and generation of a DR operation token (the OTP-token ceremony of `bunker-seal`, the
//! same one `sys/generate-root` runs, with a DR operation token as what it produces).

use std::sync::Mutex;

use bunker_seal::{KeyCeremony, OtpTokenCeremony};

#[derive(Default)]
pub(crate) struct Ceremonies {
    pub promote: Mutex<Option<KeyCeremony>>,
    pub op_token: Mutex<Option<OtpTokenCeremony>>,
}
