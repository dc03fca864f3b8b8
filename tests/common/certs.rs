//! Certificates for TLS tests, made with the `openssl` command: a CA, and
//! certificates it signs.

use std::path::Path;

pub fn openssl(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (these tests make their certificates with it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `openssl req` making a new P-256 key `key` (unencrypted) and, with
/// `rest`, what it writes with it.
fn request_with_new_key(dir: &Path, key: &str, rest: &[&str]) {
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
    ];
    args.extend_from_slice(rest);
    openssl(dir, &args);
}

/// A CA (`NAME-ca.pem`/`.key`) in `dir`.
pub fn ca(dir: &Path, name: &str) {
    request_with_new_key(
        dir,
        &format!("{name}-ca.key"),
        &[
            "-x509",
            "-out",
            &format!("{name}-ca.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
        ],
    );
}

/// A certificate `NAME.pem`/`.key` signed by the CA `CA`, with `extensions`.
pub fn signed(dir: &Path, ca: &str, name: &str, extensions: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
    request_with_new_key(
        dir,
        &format!("{name}.key"),
        &[
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

pub const SERVER_EXT: &str =
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";
