//! One settings type per binary, read in layers, each above the one before:
//!
//! 1. the library's defaults: each flag's `default_value_t` is a `DEFAULT_*` constant, so
//!    `--help` prints what the code does;
//! 2. the TOML file named by `--config`, for a binary that has that flag: keys are the long flag
//!    names (`max-agents = 10`, `listen = ["0.0.0.0:80"]`, `allow-anonymous = true`);
//! 3. environment variables, for the flags that declare one (`PTTH_TOKEN`);
//! 4. the command line.
//!
//! The file is applied by making its values the flags' defaults before the real parse, so clap
//! itself does the precedence (command line, then environment, then default) and the parsing of
//! every value: a file value is read exactly as the same flag would be.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{ArgAction, Command, Parser};

/// The name of the flag that names the settings file.
const CONFIG: &str = "config";

/// Parse the process's settings; print the error or the help and exit when there is one.
pub fn parse<S: Parser>() -> S {
    parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// Parse `args` (the program name first) in layers (see the module documentation).
pub fn parse_from<S: Parser>(
    args: impl IntoIterator<Item = impl Into<OsString>>,
) -> Result<S, clap::Error> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let flags = S::command().try_get_matches_from(&args)?;
    // A fresh command: clap indexes a command's flags when it first parses, and changing a
    // flag of a command that has parsed leaves that index stale.
    let mut cmd = S::command();
    let file = flags.try_get_one::<PathBuf>(CONFIG).ok().flatten();
    if let Some(path) = file {
        for (id, values) in file_layer(&cmd, path)? {
            cmd = cmd.mut_arg(id, |arg| arg.default_values(values));
        }
    }
    let matches = cmd.try_get_matches_from_mut(&args)?;
    S::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// The settings of the file at `path`, as flag id and values, each checked as the flag's own.
fn file_layer(cmd: &Command, path: &Path) -> Result<Vec<(String, Vec<String>)>, clap::Error> {
    let fail = |what: String| {
        cmd.clone().error(
            ErrorKind::ValueValidation,
            format!("{}: {what}", path.display()),
        )
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let mut layer = Vec::new();
    for (key, value) in table {
        let arg = cmd
            .get_arguments()
            .find(|a| {
                a.get_long() == Some(key.as_str()) && key != CONFIG && settable(a.get_action())
            })
            .ok_or_else(|| fail(format!("unknown setting {key:?}")))?;
        let many = matches!(arg.get_action(), ArgAction::Append);
        let values = match value {
            toml::Value::Array(items) if many => items,
            toml::Value::Array(_) => {
                return Err(fail(format!("{key} takes one value, not a list")));
            }
            one => vec![one],
        };
        let values = values
            .into_iter()
            .map(|v| {
                scalar(v).ok_or_else(|| fail(format!("{key}: not a string, number or boolean")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Each value is checked as if it were given as the flag, so that a bad one is reported
        // against the file, not as a bad default.
        let mut probe = vec![OsString::from(cmd.get_name())];
        for v in &values {
            match arg.get_action() {
                ArgAction::SetTrue => {
                    let on: bool = v
                        .parse()
                        .map_err(|_| fail(format!("{key}: {v:?} is not true or false")))?;
                    if on {
                        probe.push(format!("--{key}").into());
                    }
                }
                _ => probe.push(format!("--{key}={v}").into()),
            }
        }
        let mut check = cmd.clone().mut_args(|a| a.required(false));
        if let Err(e) = check.try_get_matches_from_mut(probe) {
            return Err(fail(first_line(&e)));
        }
        layer.push((arg.get_id().to_string(), values));
    }
    Ok(layer)
}

/// Whether a flag takes a setting (not `--help` or `--version`).
fn settable(action: &ArgAction) -> bool {
    matches!(
        action,
        ArgAction::Set | ArgAction::Append | ArgAction::SetTrue
    )
}

/// A TOML value as the flag's text.
fn scalar(v: toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// clap's message without its `error: ` prefix and the usage lines after it.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use humantime::Duration as Dur;
    use std::time::Duration;

    /// A variable every test process has, so that the environment layer is tested without
    /// changing the environment.
    const ENV: &str = "PATH";

    /// A settings type with one setting of each kind, as the binaries declare them.
    #[derive(Debug, Parser)]
    struct Demo {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 7)]
        count: usize,
        #[arg(long, value_parser = crate::common::duration, default_value_t = Dur::from(Duration::from_secs(30)))]
        wait: Dur,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        on: bool,
        #[arg(long = "addr")]
        addrs: Vec<std::net::SocketAddr>,
        #[arg(long, env = ENV, default_value = "default")]
        level: String,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    fn parse(args: &[&str]) -> Result<Demo, clap::Error> {
        parse_from(std::iter::once("demo").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_then_file_then_env_then_flags() {
        let env = std::env::var(ENV).expect("tests run with PATH set");
        let d = parse(&[]).unwrap();
        assert_eq!((d.count, d.wait), (7, Dur::from(Duration::from_secs(30))));
        assert!(!d.on && d.name.is_none() && d.addrs.is_empty());

        let f = file(
            "count = 9\nwait = \"2m\"\nname = \"file\"\non = true\naddr = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nlevel = \"file\"\n",
        );
        let path = f.path().to_str().unwrap();
        let d = parse(&["--config", path]).unwrap();
        assert_eq!((d.count, d.wait), (9, Dur::from(Duration::from_secs(120))));
        assert_eq!(d.name.as_deref(), Some("file"));
        assert!(d.on);
        assert_eq!(d.addrs.len(), 2);
        // The environment is above the file...
        assert_eq!(d.level, env);
        // ...and the flags above both.
        let d = parse(&[
            "--config",
            path,
            "--level",
            "flag",
            "--count",
            "1",
            "--addr",
            "127.0.0.1:3",
        ])
        .unwrap();
        assert_eq!((d.level.as_str(), d.count, d.addrs.len()), ("flag", 1, 1));
        assert_eq!(d.wait, Dur::from(Duration::from_secs(120)));
    }

    #[test]
    fn bad_files_are_refused_naming_the_file_and_the_key() {
        for (text, want) in [
            ("nope = 1\n", "unknown setting \"nope\""),
            ("config = \"x\"\n", "unknown setting \"config\""),
            ("help = true\n", "unknown setting \"help\""),
            ("count = \"many\"\n", "count"),
            ("wait = \"10 parsecs\"\n", "wait"),
            ("count = [1, 2]\n", "count takes one value"),
            ("on = \"yes\"\n", "on"),
            ("count = 1.5\n", "count: not a string"),
            ("count = \n", "count"),
        ] {
            let f = file(text);
            let path = f.path().to_str().unwrap();
            let e = parse(&["--config", path]).unwrap_err().to_string();
            assert!(e.contains(path) && e.contains(want), "{text:?}: {e}");
        }
        let e = parse(&["--config", "/nonexistent/ptth.toml"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/ptth.toml") && e.contains("cannot read"),
            "{e}"
        );
    }
}
