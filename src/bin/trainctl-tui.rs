//! `trainctl-tui`: the interactive cockpit.

use clap::Parser;
use std::path::PathBuf;
use trainctl::config::{Project, UserConfig};
use trainctl::engine::Engine;
use trainctl::tui;

#[derive(Parser, Debug)]
#[command(name = "trainctl-tui", version, about = "The trainctl cockpit")]
struct Args {
    /// User config file (default: confy's place, or $TRAINCTL_CONFIG).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Hide every destructive action (launch, run, sync, cancel, terminate).
    #[arg(long)]
    readonly: bool,
    /// Most frames per second (default from the config, 20).
    #[arg(long)]
    fps: Option<u32>,
    /// Project directory or trainctl.toml to run (default: walk up from here).
    #[arg(long)]
    project: Option<PathBuf>,
}

fn fail(code: i32, msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(code);
}

fn main() {
    trainctl::limit_malloc_arenas();
    let args = Args::parse();
    let (cfg, cfg_path) = UserConfig::load(args.config.as_deref()).unwrap_or_else(|e| fail(2, e));
    // Key bindings and colours: located errors before the terminal is touched.
    tui::settings::check(&cfg, &cfg_path).unwrap_or_else(|e| fail(2, e));
    let project = match &args.project {
        Some(p) => Some(Project::discover(p).unwrap_or_else(|e| fail(2, e))),
        None => std::env::current_dir()
            .ok()
            .and_then(|d| Project::find(&d))
            .map(|f| Project::load(&f).unwrap_or_else(|e| fail(2, e))),
    };
    let fps = args.fps.unwrap_or(cfg.tui.fps).clamp(1, 60);
    let mouse = cfg.tui.mouse;
    let engine = Engine::open(cfg).unwrap_or_else(|e| fail(1, format!("{e:#}")));
    // Logs go to a file, never to the screen.
    let log_path = engine.data_dir().join("trainctl-tui.log");
    if let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
    {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("TRAINCTL_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init();
    }
    let theme = tui::theme::Theme::new(tui::theme::ColorMode::detect(), &engine.config().tui.theme)
        .unwrap_or_else(|e| fail(2, e));
    let mut app = tui::new_app(
        &engine,
        args.readonly,
        project.as_ref().map(|p| p.name()),
        theme,
    )
    .unwrap_or_else(|e| fail(2, e));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(1, e));
    let result = rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ctx = tui::run::Context::new(engine, project, tx);
        // ratatui::init restores the terminal on panic too.
        let mut terminal = ratatui::init();
        if mouse {
            let _ = crossterm::execute!(std::io::stdout(), crossterm::event::EnableMouseCapture);
        }
        ctx.execute(tui::app::Command::Refresh);
        let input = crossterm::event::EventStream::new();
        let r = tui::run::event_loop(&mut terminal, &mut app, &ctx, &mut rx, input, fps).await;
        if mouse {
            let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableMouseCapture);
        }
        ratatui::restore();
        r
    });
    if let Err(e) = result {
        tracing::error!("cockpit stopped: {e:#}");
        fail(1, format!("{e:#}"));
    }
}
