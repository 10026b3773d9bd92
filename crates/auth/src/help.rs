//! What `?help=1` shows for the auth methods' paths (see `bunker_sdk::BackendHelp`).

use bunker_sdk::path_help as path;
use bunker_sdk::BackendHelp;

pub(crate) const USERPASS: BackendHelp = BackendHelp {
    description: "The userpass auth method lets people log in with a username and password. \
        Passwords are stored as argon2id hashes; a login returns a token with the user's \
        token_* settings (policies, TTLs, bound CIDRs) within the mount's TTLs.",
    paths: &[
        path(
            "login/:username",
            "Log in as the user (POST password); no token needed.",
        ),
        path("users", "List the users (LIST)."),
        path(
            "users/:username/password",
            "Change the user's password (POST password).",
        ),
        path(
            "users/:username/policies",
            "Change the user's token_policies.",
        ),
        path(
            "users/:username",
            "Create or update (POST password, token_policies, token_ttl, token_max_ttl, ...), \
             read or delete a user.",
        ),
    ],
};

pub(crate) const APPROLE: BackendHelp = BackendHelp {
    description: "The AppRole auth method lets machines and applications log in with a role id \
        (like a username, not secret) and a secret id (a credential with its own use limit, \
        TTL and CIDRs, usually delivered response-wrapped). A login returns a token with the \
        role's token_* settings within the mount's TTLs.",
    paths: &[
        path("login", "Log in (POST role_id, secret_id); no token needed."),
        path("tidy/secret-id", "Remove expired secret ids and their accessors."),
        path("role", "List the roles (LIST)."),
        path("role/:role_name/role-id", "Read the role's role id, or set a custom one (POST role_id)."),
        path("role/:role_name/secret-id/lookup", "Look a secret id up (POST secret_id)."),
        path("role/:role_name/secret-id/destroy", "Destroy a secret id (POST secret_id)."),
        path("role/:role_name/secret-id", "Generate a secret id (POST metadata, cidr_list, ttl, num_uses), or list their accessors (LIST)."),
        path("role/:role_name/custom-secret-id", "Register a secret id of your choosing (POST secret_id)."),
        path("role/:role_name/secret-id-accessor/lookup", "Look a secret id up by its accessor (POST secret_id_accessor)."),
        path("role/:role_name/secret-id-accessor/destroy", "Destroy a secret id by its accessor (POST secret_id_accessor)."),
        path(
            "role/:role_name/:setting",
            "Read, set (POST) or reset to its default (DELETE) one setting of the role: \
             policies, secret-id-num-uses, secret-id-ttl, token-num-uses, token-ttl, \
             token-max-ttl, period, bind-secret-id, secret-id-bound-cidrs, token-bound-cidrs.",
        ),
        path(
            "role/:role_name",
            "Create or update (POST bind_secret_id, secret_id_num_uses, secret_id_ttl, \
             secret_id_bound_cidrs, token_*), read or delete a role.",
        ),
    ],
};
