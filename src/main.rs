//! `trainctl`: the headless front end.

use clap::Parser;

fn main() {
    let cli = trainctl::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRAINCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(trainctl::cli::EXIT_ERROR);
        }
    };
    let code = rt.block_on(trainctl::cli::main(cli));
    std::process::exit(code);
}
