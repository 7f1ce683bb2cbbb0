//! Prints the vendored protoc's path, then its include directory, one per line.

fn main() {
    match (
        protoc_bin_vendored::protoc_bin_path(),
        protoc_bin_vendored::include_path(),
    ) {
        (Ok(bin), Ok(include)) => {
            println!("{}", bin.display());
            println!("{}", include.display());
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("no vendored protoc for this platform: {e}");
            std::process::exit(1);
        }
    }
}
