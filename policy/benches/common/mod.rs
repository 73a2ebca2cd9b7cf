//! Text for the policy benchmarks and the `scan_cost` example: what agents write, with and
//! without near misses of the built-in secret patterns.

/// Notes, code, logs and JSON as an agent writes them; no secrets.
pub const CLEAN: &[&str] = &[
    "## Meeting 2024-05-01\n",
    "The agent summarised the meeting notes and filed the action items for the team.\n",
    "- [ ] follow up with the storage team about the compaction schedule\n",
    "fn load_config(path: &Path) -> Result<Config, Error> { let text = read(path)?; }\n",
    "2024-05-01T12:00:00Z step=42 status=ok duration_ms=17 user=alice\n",
    "Remember: the key insight was to cache the parsed tokens per session.\n",
    "{\"id\": 1234, \"name\": \"widget\", \"tags\": [\"blue\", \"small\"], \"price\": 9.99}\n",
    "SELECT name, email FROM users WHERE created_at > now() - interval '7 days';\n",
    "Die Ergebnisse wurden überprüft; nächste Schritte: Übersetzung, Prüfung.\n",
    "See https://docs.example.org/guide/intro.html#setup for the setup steps.\n",
];

/// Lines that start like secrets but are not: every built-in rule's literal prefix occurs
/// (so the prefilter stops and the regexes must look), none completes a match.
pub const NEAR_MISS: &[&str] = &[
    "The key id AKIAEXAMPLE was rotated; ASIA keys are temporary.\n",
    "Tokens are logged as ghp_XXXX or github_pat_… and glpat-short, never in full.\n",
    "-----BEGIN PUBLIC KEY----- is fine to share, the private one is not.\n",
    "password reset link sent; the password: field must not be empty.\n",
    "export api_key = $API_KEY # from the environment, secret={placeholder}\n",
    "aws_secret_access_key = <from vault>, access_token: ${TOKEN}\n",
    "Slack bot token looks like xoxb-placeholder; webhook https://hooks.slack.com/services/T000/B000/x\n",
    "Keys: AIzaSyEXAMPLE, sk_live_abc, sk-ant-api03-REDACTED, npm_token, sk-proj-short\n",
];

/// `len` bytes of text; with `near_miss`, one line in four is a near miss.
pub fn text(len: usize, near_miss: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 256);
    let (mut i, mut j) = (0usize, 0usize);
    while out.len() < len {
        if near_miss && i % 4 == 3 {
            out.extend_from_slice(NEAR_MISS[j % NEAR_MISS.len()].as_bytes());
            j += 3;
        } else {
            out.extend_from_slice(CLEAN[(i * 7) % CLEAN.len()].as_bytes());
        }
        i += 1;
    }
    // Cut at a line end so no line is cut into something else.
    let cut = out[..len]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(len, |p| p + 1);
    out.truncate(cut);
    out.resize(len, b'\n');
    out
}
