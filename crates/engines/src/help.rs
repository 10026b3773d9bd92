//! What `?help=1` shows for the secrets engines' paths (see `bunker_sdk::BackendHelp`).

use bunker_sdk::path_help as path;
use bunker_sdk::BackendHelp;

pub(crate) const KV_V1: BackendHelp = BackendHelp {
    description: "The kv backend (version 1) reads and writes arbitrary secrets to the \
        storage of its mount. Each secret is a JSON object stored as it is written, with no \
        versions; a write replaces the whole secret. A `ttl` field in the secret is returned as \
        the lease duration of reads, as a hint to clients.",
    paths: &[path(
        "*",
        "Read (GET), write (POST/PUT), delete (DELETE) or list (LIST) a secret at any path \
         below the mount.",
    )],
};

pub(crate) const KV_V2: BackendHelp = BackendHelp {
    description: "The kv backend (version 2) stores versioned secrets. Each write to \
        `data/<path>` makes a new version; old versions can be read, soft-deleted, undeleted and \
        destroyed, and `metadata/<path>` holds the versions, `max_versions`, `cas_required` and \
        custom metadata. `config` sets the defaults of the mount.",
    paths: &[
        path(
            "config",
            "Read or write the mount's max_versions, cas_required and delete_version_after.",
        ),
        path(
            "data/*",
            "Read (GET, ?version=N), write (POST/PUT with data and options.cas), patch (PATCH, \
             JSON merge) or soft-delete the latest version (DELETE) of a secret.",
        ),
        path(
            "delete/*",
            "Soft-delete the given versions of a secret (POST versions=[...]).",
        ),
        path(
            "undelete/*",
            "Restore soft-deleted versions of a secret (POST versions=[...]).",
        ),
        path(
            "destroy/*",
            "Destroy the given versions of a secret for good (POST versions=[...]).",
        ),
        path(
            "metadata/*",
            "Read, write (max_versions, cas_required, delete_version_after, custom_metadata), \
             patch, list (LIST) or delete (all versions and the metadata) a secret's metadata.",
        ),
        path(
            "subkeys/*",
            "Read the keys of a secret's data without their values.",
        ),
    ],
};

pub(crate) const CUBBYHOLE: BackendHelp = BackendHelp {
    description: "The cubbyhole backend reads and writes secrets private to the token that \
        makes the request: no other token, not even a root token, can read them, and they are \
        destroyed when the token is revoked or expires. Response wrapping keeps wrapped answers \
        in the cubbyhole of the wrapping token.",
    paths: &[path(
        "*",
        "Read (GET), write (POST/PUT), delete (DELETE) or list (LIST) a secret of this token.",
    )],
};

pub(crate) const TRANSIT: BackendHelp = BackendHelp {
    description: "The transit backend is encryption as a service: named keys never leave it, \
        and applications send it plaintext to encrypt, ciphertext to decrypt, data to sign, \
        verify or HMAC. Ciphertexts are `vault:v<N>:<base64>`, where N is the key version; keys \
        are rotated, their old versions retired with min_decryption_version and trimmed.",
    paths: &[
        path("keys", "List the named keys (LIST)."),
        path("keys/:name/config", "Set min_decryption_version, min_encryption_version, deletion_allowed, exportable, allow_plaintext_backup and auto_rotate_period."),
        path("keys/:name/rotate", "Rotate the key: a new version becomes the latest."),
        path("keys/:name/trim", "Delete the versions below min_available_version for good."),
        path("keys/:name", "Create (POST type, derived, exportable, ...), read or delete a named key."),
        path("encrypt/:name", "Encrypt base64 plaintext (or batch_input) with the named key."),
        path("decrypt/:name", "Decrypt a vault:v<N>: ciphertext (or batch_input) with the named key."),
        path("rewrap/:name", "Re-encrypt ciphertext with the latest (or given) version of the key."),
        path("datakey/:type/:name", "Generate a data key: `plaintext` returns it and its ciphertext, `wrapped` only the ciphertext."),
        path("hmac/*", "Compute the HMAC of base64 input with the named key (hmac/<name>[/<algorithm>])."),
        path("sign/*", "Sign base64 input with the named asymmetric key (sign/<name>[/<hash_algorithm>])."),
        path("verify/*", "Verify a signature or HMAC made with the named key (verify/<name>[/<hash_algorithm>])."),
        path("random/*", "Return random bytes (random[/<source>][/<bytes>]), base64 or hex."),
        path("hash/*", "Hash base64 input (hash[/<algorithm>]), hex or base64."),
        path("export/*", "Export an exportable key (export/<key_type>/<name>[/<version>])."),
        path("backup/:name", "Back the key up (needs exportable and allow_plaintext_backup)."),
        path("restore/*", "Restore a key from a backup (restore[/<name>])."),
    ],
};
