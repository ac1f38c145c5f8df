//! `trainctl`: the headless front end.

use clap::Parser;

fn main() {
    trainctl::limit_malloc_arenas();
    let cli = trainctl::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRAINCTL_LOG")
                // Warnings, and what a launch on a GPU cloud waits for (a machine can
                // take minutes to boot: the user sees why nothing happens).
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "warn,trainctl::provider::gpucloud=info,trainctl::provider::aws=info",
                    )
                }),
        )
        // Colour only on a terminal, and never under NO_COLOR.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
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
