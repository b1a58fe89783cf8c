//! Writing a rotated OAuth2 refresh token back into the Secret manifest it came
//! from. The file is edited as text, not re-serialized, so comments, order and
//! formatting survive; the old value must appear exactly once (as written in
//! `stringData`, or base64 in `data`), and the edited file must read back with
//! the new value before it atomically replaces the old one.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};

use super::manifests::{manifest_files, secrets_in_text};
use mailroom_core::oauth2::{WriteBack, WriteBackError};

/// Where the Secret manifests are.
#[derive(Clone, Debug)]
pub(crate) enum SecretFiles {
    /// Every manifest file of a folder (`mailroom run`).
    Folder(PathBuf),
    /// The files named on the command line (`mailroom test-connection`).
    Files(Vec<PathBuf>),
}

impl WriteBack for SecretFiles {
    fn write<'a>(
        &'a self,
        namespace: &'a str,
        secret: &'a str,
        key: &'a str,
        old: &'a SecretString,
        new: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), WriteBackError>> {
        let files = match self {
            Self::Folder(dir) => manifest_files(dir).map_err(|e| WriteBackError(e.to_string())),
            Self::Files(files) => Ok(files.clone()),
        };
        let (namespace, secret, key) = (namespace.to_owned(), secret.to_owned(), key.to_owned());
        let (old, new) = (old.clone(), new.clone());
        Box::pin(async move {
            let files = files?;
            tokio::task::spawn_blocking(move || {
                rewrite(&files, &namespace, &secret, &key, &old, &new)
            })
            .await
            .map_err(|e| WriteBackError(format!("the write-back task failed: {e}")))?
        })
    }
}

fn rewrite(
    files: &[PathBuf],
    namespace: &str,
    secret: &str,
    key: &str,
    old: &SecretString,
    new: &SecretString,
) -> Result<(), WriteBackError> {
    let defines = |text: &str| {
        secrets_in_text(text)
            .iter()
            .any(|(id, _)| id.namespace == namespace && id.name == secret)
    };
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        if !defines(&text) {
            continue;
        }
        let updated = replace(&text, namespace, secret, key, old, new)
            .map_err(|why| WriteBackError(format!("{}: {why}", file.display())))?;
        return replace_file(file, &updated)
            .map_err(|e| WriteBackError(format!("cannot write {}: {e}", file.display())));
    }
    Err(WriteBackError(format!(
        "no manifest file defines Secret {namespace}/{secret} any more"
    )))
}

fn replace(
    text: &str,
    namespace: &str,
    secret: &str,
    key: &str,
    old: &SecretString,
    new: &SecretString,
) -> Result<String, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (old, new) = (old.expose_secret(), new.expose_secret());
    let (old_encoded, new_encoded) = (b64.encode(old), b64.encode(new));
    let updated = match (
        text.matches(old).count(),
        text.matches(&old_encoded).count(),
    ) {
        (1, 0) => text.replacen(old, new, 1),
        (0, 1) => text.replacen(&old_encoded, &new_encoded, 1),
        (0, 0) => {
            return Err(format!(
                "key {key:?} no longer holds the refresh token mailroom used (changed by hand?); left as it is"
            ));
        }
        _ => {
            return Err(format!(
                "the refresh token of key {key:?} appears more than once in the file; mailroom replaces it only where it appears once"
            ));
        }
    };
    let reads_back = secrets_in_text(&updated).iter().any(|(id, data)| {
        id.namespace == namespace
            && id.name == secret
            && data
                .get(key)
                .is_some_and(|v| String::from_utf8_lossy(v).trim() == new)
    });
    if reads_back {
        Ok(updated)
    } else {
        Err(format!(
            "with the new refresh token in place, key {key:?} would not read back as it; write the value on one line, quoted"
        ))
    }
}

/// Replaces `file` by a complete new version: a hidden sibling (which the
/// loader skips) written with the file's mode, synced and renamed over it.
fn replace_file(file: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = file.with_file_name(format!(".{name}.rotating"));
    let mode = std::fs::metadata(file)?.permissions().mode();
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode & 0o7777)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_owned())
    }

    const FILE: &str = "# the mailbox's OAuth2 client\napiVersion: v1\nkind: Secret\nmetadata:\n  name: oauth\n  namespace: helpdesk\nstringData:\n  client_id: abc\n  refresh_token: \"1//old-token\"\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: other\n  namespace: helpdesk\ndata:\n  refresh_token: MS8vb2xkLXRva2Vu\n";

    #[test]
    fn the_token_is_replaced_in_place_keeping_comments() {
        let only_first = FILE.split("---").next().unwrap();
        let out = replace(
            only_first,
            "helpdesk",
            "oauth",
            "refresh_token",
            &s("1//old-token"),
            &s("1//new-token"),
        )
        .unwrap();
        assert!(out.starts_with("# the mailbox's OAuth2 client\n"), "{out}");
        assert!(out.contains("refresh_token: \"1//new-token\""), "{out}");
    }

    #[test]
    fn base64_data_is_replaced_encoded() {
        let second = FILE.split("---").nth(1).unwrap();
        let out = replace(
            second,
            "helpdesk",
            "other",
            "refresh_token",
            &s("1//old-token"),
            &s("1//new-token"),
        )
        .unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode("1//new-token");
        assert!(out.contains(&encoded), "{out}");
    }

    #[test]
    fn an_ambiguous_or_changed_value_is_left_alone() {
        // The old token is in both Secrets of the file: replacing one is a guess.
        let e = replace(
            FILE,
            "helpdesk",
            "oauth",
            "refresh_token",
            &s("1//old-token"),
            &s("n"),
        )
        .unwrap_err();
        assert!(e.contains("more than once"), "{e}");
        let e = replace(
            FILE,
            "helpdesk",
            "oauth",
            "refresh_token",
            &s("never-there"),
            &s("n"),
        )
        .unwrap_err();
        assert!(e.contains("no longer holds"), "{e}");
        assert!(!e.contains("never-there"), "no token in errors: {e}");
    }

    #[test]
    fn a_value_that_would_not_read_back_is_refused() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: oauth\nstringData:\n  refresh_token: plain\n";
        let e = replace(
            text,
            "default",
            "oauth",
            "refresh_token",
            &s("plain"),
            &s("x: y"),
        )
        .unwrap_err();
        assert!(e.contains("would not read back"), "{e}");
    }

    #[test]
    fn the_file_is_replaced_atomically_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret.yaml");
        std::fs::write(&file, FILE.split("---").next().unwrap()).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        rewrite(
            std::slice::from_ref(&file),
            "helpdesk",
            "oauth",
            "refresh_token",
            &s("1//old-token"),
            &s("1//rotated"),
        )
        .unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("1//rotated"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
