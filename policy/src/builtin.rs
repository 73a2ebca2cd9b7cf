//! The built-in policy: loaded before every policy file unless one says
//! `[builtin] enabled = false`. It is written in the policy language itself, so
//! `agentfs policy default` can print it as a starting point.

/// The name the built-in policy has in messages.
pub const BUILTIN_NAME: &str = "<built-in>";

/// The built-in secret patterns: rule name and what it catches. Each is a `[[content]]`
/// rule of [`BUILTIN_TOML`]; `[builtin] secrets = false` leaves them all out,
/// `[builtin] disable = ["name"]` one of them.
pub const BUILTIN_SECRETS: &[(&str, &str)] = &[
    ("aws-access-key-id", "AWS access key id (AKIA…, ASIA…)"),
    (
        "aws-secret-access-key",
        "AWS secret access key assigned to aws_secret_access_key",
    ),
    (
        "pem-private-key",
        "PEM private key header (RSA, EC, DSA, OPENSSH, ENCRYPTED, PGP)",
    ),
    (
        "github-token",
        "GitHub token (ghp_, gho_, ghu_, ghs_, ghr_)",
    ),
    (
        "github-fine-grained-token",
        "GitHub fine-grained token (github_pat_)",
    ),
    ("gitlab-token", "GitLab personal access token (glpat-)"),
    (
        "slack-token",
        "Slack token (xoxb-, xoxp-, xoxa-, xoxr-, xoxs-, xoxe-, xoxo-)",
    ),
    ("slack-webhook-url", "Slack incoming webhook URL"),
    ("google-api-key", "Google API key (AIza…)"),
    ("stripe-secret-key", "Stripe live secret or restricted key"),
    ("openai-api-key", "OpenAI API key (sk-…T3BlbkFJ…)"),
    (
        "anthropic-api-key",
        "Anthropic API key (sk-ant-api…, sk-ant-admin…)",
    ),
    ("npm-token", "npm access token (npm_)"),
    (
        "generic-password-assignment",
        "password= / passwd: with a literal value",
    ),
    (
        "generic-secret-assignment",
        "secret= / client_secret: with a literal value",
    ),
    (
        "generic-api-key-assignment",
        "api_key= / apikey / access_token / auth_token with a literal value",
    ),
];

/// The built-in policy, in the policy language.
pub const BUILTIN_TOML: &str = r#"# agentfs built-in policy.
#
# Loaded before every --policy file. A file leaves parts of it out with
#   [builtin]
#   secrets = false            # none of the built-in secret patterns
#   disable = ["max-file-size"] # named built-in rules
#   enabled = false            # none of it (then grant mem/ yourself)
# Every rule's action defaults to "kill": the call fails with EACCES, SIGPOLICY is
# raised and the agent is killed. "deny" only refuses; "audit" allows and records.

# Default deny: a path right that no allow rule grants is refused.

[[allow]]
name = "own-memory"
paths = ["mem", "mem/**"]          # create, write and delete in the agent's own mem/

[[allow]]
name = "own-checkpoints"
paths = ["state/*"]
ops = ["create", "delete"]         # mkdir state/NAME snapshots, rmdir deletes

[[append_only]]
name = "episodic-append-only"
paths = ["mem/episodic/**"]        # new files and appends only

[[limit]]
name = "max-file-size"
max_file_size = "1 GiB"

[[file_types]]
name = "no-special-files"
forbid = ["special"]               # no FIFOs, sockets or device nodes

# Secrets that must never appear in a file, a name, a symlink target or an xattr.
# Every regex has a bounded match length; (?-u:\b) is an ASCII word boundary.

[[content]]
name = "aws-access-key-id"
regex = '(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?-u:\b)'

[[content]]
name = "aws-secret-access-key"
regex = '''(?i-u)aws_?secret_?(?:access_?)?key["']?\s{0,5}(?:=|:|=>|:=)\s{0,5}["']?[A-Za-z0-9/+]{40}'''

[[content]]
name = "pem-private-key"
regex = '-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----'

[[content]]
name = "github-token"
regex = '(?-u:\b)gh[pousr]_[A-Za-z0-9]{36}(?-u:\b)'

[[content]]
name = "github-fine-grained-token"
regex = '(?-u:\b)github_pat_[A-Za-z0-9_]{82}(?-u:\b)'

[[content]]
name = "gitlab-token"
regex = '(?-u:\b)glpat-[A-Za-z0-9_-]{20}'

[[content]]
name = "slack-token"
regex = '(?-u:\b)xox[abeoprs]-[0-9A-Za-z]{1,40}-[0-9A-Za-z-]{8,160}'

[[content]]
name = "slack-webhook-url"
regex = 'https://hooks\.slack\.com/services/T[A-Z0-9]{8,12}/B[A-Z0-9]{8,12}/[A-Za-z0-9]{24}'

[[content]]
name = "google-api-key"
regex = '(?-u:\b)AIza[0-9A-Za-z_-]{35}'

[[content]]
name = "stripe-secret-key"
regex = '(?-u:\b)[rs]k_live_[0-9A-Za-z]{24,99}'

[[content]]
name = "openai-api-key"
regex = '(?-u:\b)sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,74}T3BlbkFJ[A-Za-z0-9_-]{20,74}'

[[content]]
name = "anthropic-api-key"
regex = '(?-u:\b)sk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_-]{80,110}'

[[content]]
name = "npm-token"
regex = '(?-u:\b)npm_[A-Za-z0-9]{36}(?-u:\b)'

# Generic assignments: a keyword, then = or : and a literal value (quoted, or unquoted
# with no space), not a $VARIABLE, %(template)s, {placeholder} or <placeholder>.

[[content]]
name = "generic-password-assignment"
regex = '''(?i-u)passw(?:or)?d["']?(?:\s{0,5}(?:=|:|=>|:=)\s{0,5}["'][^"'\s$%{<]{1}[^"'\s]{5,199}["']|=[^"'\s$%{<]{1}[^"'\s;,]{5,199})'''

[[content]]
name = "generic-secret-assignment"
regex = '''(?i-u)secret["']?(?:\s{0,5}(?:=|:|=>|:=)\s{0,5}["'][^"'\s$%{<]{1}[^"'\s]{7,199}["']|=[^"'\s$%{<]{1}[^"'\s;,]{7,199})'''

[[content]]
name = "generic-api-key-assignment"
regex = '''(?i-u)(?:api_?key|access_?token|auth_?token)["']?(?:\s{0,5}(?:=|:|=>|:=)\s{0,5}["'][^"'\s$%{<]{1}[^"'\s]{7,199}["']|=[^"'\s$%{<]{1}[^"'\s;,]{7,199})'''

# Cases that must hold before this policy is activated.

[[test]]
name = "a plain note is allowed"
agent = "a"
op = "write"
path = "mem/semantic/notes.txt"
content = "meeting at 10, bring the slides"
expect = "allow"
rule = "own-memory"

[[test]]
name = "an AWS key in a note kills"
agent = "a"
op = "write"
path = "mem/semantic/notes.txt"
content = "key: AKIAIOSFODNN7EXAMPLE"
expect = "kill"
rule = "aws-access-key-id"

[[test]]
name = "a private key as a file name kills"
agent = "a"
op = "create"
path = "mem/working/-----BEGIN RSA PRIVATE KEY-----"
expect = "kill"
rule = "pem-private-key"

[[test]]
name = "appending to an episodic log is allowed"
agent = "a"
op = "write"
path = "mem/episodic/log"
size_before = 100
offset = 100
content = "step 2 done\n"
expect = "allow"

[[test]]
name = "overwriting an episodic log kills"
agent = "a"
op = "write"
path = "mem/episodic/log"
size_before = 100
offset = 0
content = "rewritten"
expect = "kill"
rule = "episodic-append-only"

[[test]]
name = "writing outside mem/ kills"
agent = "a"
op = "create"
path = "notes.txt"
expect = "kill"
rule = "default-deny"

[[test]]
name = "a checkpoint may be created"
agent = "a"
op = "mkdir"
path = "state/before-refactor"
expect = "allow"
rule = "own-checkpoints"

[[test]]
name = "a FIFO kills"
agent = "a"
op = "mknod"
path = "mem/working/pipe"
kind = "fifo"
expect = "kill"
rule = "no-special-files"

[[test]]
name = "growing a file past 1 GiB kills"
agent = "a"
op = "truncate"
path = "mem/working/big"
size = 1073741825
expect = "kill"
rule = "max-file-size"
"#;

/// The built-in policy as a file to start from: it says `[builtin] enabled = false`, since
/// it replaces the built-in policy when given with `--policy`.
pub fn default_policy_toml() -> String {
    let body = BUILTIN_TOML
        .split_once("\n\n")
        .map_or(BUILTIN_TOML, |(_, rest)| rest);
    format!(
        "# agentfs policy, started from the built-in default (agentfs policy default).\n\
         # Check it with: agentfs policy check FILE\n\
         \n\
         # This file replaces the built-in policy instead of adding to it.\n\
         [builtin]\n\
         enabled = false\n\
         \n\
         {body}"
    )
}
