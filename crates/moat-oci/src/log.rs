//! `--log FILE --log-format text|json`: containerd reads the file as JSON
//! lines and shows the last error; podman 4.3 reads it as one JSON object,
//! so a failure writes exactly one error object. The file is always
//! created. Errors also go to stderr; warnings go to stderr only.

use std::fs::File;
use std::io::Write;

use crate::args::{Cli, LogFormat};

pub struct Logger {
    file: Option<File>,
    json: bool,
    debug: bool,
}

fn now() -> String {
    moat_policy::plan::time::now_rfc3339()
}

impl Logger {
    pub fn open(cli: &Cli) -> Logger {
        let file = cli.log.as_ref().and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        Logger {
            file,
            json: cli.log_format == LogFormat::Json,
            debug: cli.debug,
        }
    }

    fn line(&self, level: &str, msg: &str) -> String {
        if self.json {
            let mut s = serde_json::json!({"level": level, "msg": msg, "time": now()}).to_string();
            s.push('\n');
            s
        } else {
            format!(
                "time=\"{}\" level={level} msg=\"{}\"\n",
                now(),
                msg.escape_default()
            )
        }
    }

    pub fn error(&self, msg: &str) {
        eprintln!("moat-oci: error: {msg}");
        if let Some(mut f) = self.file.as_ref() {
            let _ = f.write_all(self.line("error", msg).as_bytes());
        }
    }

    pub fn warn(&self, msg: &str) {
        eprintln!("moat-oci: warning: {msg}");
        if self.debug && !self.json {
            if let Some(mut f) = self.file.as_ref() {
                let _ = f.write_all(self.line("warning", msg).as_bytes());
            }
        }
    }

    pub fn debug(&self, msg: &str) {
        if self.debug && !self.json {
            if let Some(mut f) = self.file.as_ref() {
                let _ = f.write_all(self.line("debug", msg).as_bytes());
            }
        }
    }
}
