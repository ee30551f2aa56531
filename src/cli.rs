//! The command line: raw arguments parsed once into validated requests, then dispatched; and the
//! exit codes ([`exit_code`]).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::gen::{self, GenSpec};
use crate::input::BadInput;
use crate::topics;

mod report_command;
use report_command::run_report;

/// Exit code of a run that failed: cannot open, read or write a file, a bad configuration, a
/// failure of the engine or of Kafka.
pub const EXIT_ERROR: u8 = 1;
/// Exit code of a command line that is not understood (an unknown flag, a missing value): clap's.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of input that cannot give a report: a file with records but no valid one (its likely
/// cause named), or a bad line under `--strict`.
pub const EXIT_BAD_INPUT: u8 = 3;

/// The exit code for an error that ended a command.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<BadInput>().is_some() {
        EXIT_BAD_INPUT
    } else {
        EXIT_ERROR
    }
}

/// How many refused lines `labelqc report` shows on stderr before it only counts them.
pub const SHOWN_BAD_LINES: u64 = 20;

/// Bad lines shown before the cause when no record of a file is valid.
const HOPELESS_BAD_LINES: usize = 3;

/// labelqc: live, exact label-quality numbers for human (and model) annotation.
#[derive(Debug, Parser)]
#[command(name = "labelqc", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Format of the log lines on stderr (their level is set by LABELQC_LOG, default `warn`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event; coloured only when stderr is a terminal.
    Text,
    /// One JSON object per line, with the event's fields, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute the quality report (agreement, gold accuracy, consensus) over JSONL files.
    Report(ReportArgs),
    /// Write a seeded, realistic stream of label events (and gold answers) as JSONL.
    Gen(GenArgs),
    /// Run live on a simulated workforce (no Kafka): the dataflows, /metrics and a terminal view.
    Demo(DemoArgs),
    /// Run the live service: Kafka in, quality topics and /metrics out.
    Run(RunArgs),
    /// Make or verify the Kafka topics of `labelqc run` (inputs and outputs) through the admin API.
    #[command(subcommand)]
    Topics(TopicsCommand),
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every missing topic with the partitions, replication and configs of `[topics]`
    /// (cleanup.policy=compact on the inputs and keyed outputs); then check them all.
    Create(TopicsArgs),
    /// Report every missing topic and every setting that differs; exit non-zero if any.
    Check(TopicsArgs),
}

#[derive(Debug, Args)]
pub struct TopicsArgs {
    /// TOML configuration (see configs/labelqc.toml): topic names, `[topics]`, `[kafka.client]`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Bootstrap brokers (`kafka.brokers`).
    #[arg(long, value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,
    /// Topic of label events (`kafka.labels_topic`).
    #[arg(long, value_name = "TOPIC")]
    pub labels_topic: Option<String>,
    /// Topic of gold answers (`kafka.gold_topic`).
    #[arg(long, value_name = "TOPIC")]
    pub gold_topic: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML configuration (see configs/labelqc.toml); the flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Bootstrap brokers (`kafka.brokers`).
    #[arg(long, value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,
    /// Topic of label events (`kafka.labels_topic`).
    #[arg(long, value_name = "TOPIC")]
    pub labels_topic: Option<String>,
    /// Topic of gold answers (`kafka.gold_topic`).
    #[arg(long, value_name = "TOPIC")]
    pub gold_topic: Option<String>,
    /// Consumer group (`kafka.group_id`).
    #[arg(long, value_name = "GROUP")]
    pub group_id: Option<String>,
    /// Dataflow worker threads (`engine.workers`).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Address of /metrics, /healthz and /readyz (`http.listen`).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Publish outputs and commit offsets in one transaction per epoch (`kafka.exactly_once`).
    #[arg(long)]
    pub exactly_once: bool,
    /// This process's index in `cluster.addresses` (`cluster.process`).
    #[arg(long, value_name = "INDEX")]
    pub process: Option<usize>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address for /metrics, /healthz and /readyz (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9898")]
    pub http: std::net::SocketAddr,
    /// Label events per second.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Size of the simulated workforce: careful annotators (94-97% accurate) with two spammers,
    /// one biased annotator and one who turns careless planted among them.
    #[arg(long, default_value_t = 100)]
    pub annotators: u32,
    /// Projects the simulated traffic spreads over (each task of a project is a scope).
    #[arg(long, default_value_t = 2)]
    pub projects: u32,
    /// Tasks per project.
    #[arg(long, default_value_t = 2)]
    pub tasks: u32,
    /// Dataflow worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    #[arg(long, default_value_t = GenSpec::default().seed)]
    pub seed: u64,
    /// Seconds after the start at which the planted careless annotator turns careless.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub careless_after: f64,
    /// Print one status line a second (and the last view at the end) instead of redrawing the
    /// screen.
    #[arg(long)]
    pub lines: bool,
    /// Also keep a live human-eval leaderboard: this many pairwise comparisons per second of 8
    /// systems (scope default/preference), by 40 raters with a left-biased, a right-biased and
    /// a tie-happy one planted among them (0: none).
    #[arg(long, value_name = "PER_SECOND", default_value_t = 0)]
    pub comparisons: u64,
}

/// The demo's drift settings: the defaults, but the agreement signal waits for 100 items instead
/// of 50. The demo re-reads the same (growing) day ten times a second, and that many looks at 50
/// items would flag a careful annotator now and then by chance.
pub fn demo_drift() -> labelqc_dataflows::drift::DriftSettings {
    use labelqc_dataflows::drift::{DriftConfig, DriftSettings};
    DriftSettings {
        defaults: DriftConfig { agreement_min_items: 100, ..DriftConfig::default() },
        projects: Default::default(),
    }
}

/// The demo's workforce: healthy, with a few planted problems (see `labelqc demo --help`).
pub fn demo_traffic(annotators: u32, projects: u32, tasks: u32, seed: u64) -> GenSpec {
    GenSpec {
        annotators,
        projects,
        tasks,
        seed,
        gold_rate: 0.1,
        spammer_share: 0.0,
        biased_share: 0.0,
        careful_accuracy_range: Some((0.94, 0.97)),
        planted: Some(gen::Planted { spammers: 2, biased: 1, careless: 1 }),
        careless_factor: 8.0,
        ..GenSpec::default()
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Label events, one JSON object a line (`-` reads standard input).
    #[arg(long, value_name = "FILE")]
    pub labels: PathBuf,
    /// Gold answers, one JSON object a line.
    #[arg(long, value_name = "FILE")]
    pub gold: Option<PathBuf>,
    /// TOML configuration (see configs/labelqc.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Include per-item consensus in the report.
    #[arg(long)]
    pub items: bool,
    /// Include each scope's numbers per tumbling event-time window (sizes from `[windows]`).
    #[arg(long)]
    pub windows: bool,
    /// Worker threads (overrides `engine.workers`).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Events per epoch (overrides `engine.epoch_events`); results do not depend on it.
    #[arg(long, value_name = "N")]
    pub epoch_events: Option<usize>,
    /// Stop at the first bad line instead of reporting it and going on.
    #[arg(long)]
    pub strict: bool,
    /// Write every refused line here, as JSON Lines: file, line, reason, kind and the raw line.
    #[arg(long, value_name = "FILE")]
    pub dead_letters: Option<PathBuf>,
    /// Pretty-print the JSON.
    #[arg(long)]
    pub pretty: bool,
    /// Write the report here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Where to write label events (`-` for standard output).
    #[arg(long, value_name = "FILE", default_value = "-")]
    pub out: PathBuf,
    /// Where to write gold answers; without it, none are written.
    #[arg(long, value_name = "FILE")]
    pub gold_out: Option<PathBuf>,
    /// Label events to write (labels, relabels and deletes).
    #[arg(long, default_value_t = GenSpec::default().events)]
    pub events: u64,
    #[arg(long, default_value_t = GenSpec::default().annotators)]
    pub annotators: u32,
    /// Distinct annotators per item.
    #[arg(long, default_value_t = GenSpec::default().labels_per_item)]
    pub labels_per_item: u32,
    #[arg(long, default_value_t = GenSpec::default().classes)]
    pub classes: u32,
    /// Share of items that are gold questions.
    #[arg(long, default_value_t = GenSpec::default().gold_rate)]
    pub gold_rate: f64,
    /// Share of events that relabel an earlier label.
    #[arg(long, default_value_t = GenSpec::default().relabel_rate)]
    pub relabel_rate: f64,
    /// Share of events that delete an earlier label.
    #[arg(long, default_value_t = GenSpec::default().delete_rate)]
    pub delete_rate: f64,
    /// Share of annotators who answer at random.
    #[arg(long, default_value_t = GenSpec::default().spammer_share)]
    pub spammers: f64,
    /// Share of annotators who favour one class.
    #[arg(long, default_value_t = GenSpec::default().biased_share)]
    pub biased: f64,
    /// Projects the generated events spread over (each task of a project is a scope).
    #[arg(long, default_value_t = GenSpec::default().projects)]
    pub projects: u32,
    /// Tasks per project.
    #[arg(long, default_value_t = GenSpec::default().tasks)]
    pub tasks: u32,
    /// Labels are ratings 1..=classes instead of class names.
    #[arg(long)]
    pub numeric: bool,
    #[arg(long, default_value_t = GenSpec::default().seed)]
    pub seed: u64,
    /// Accuracy of every careful annotator (drawn per annotator without it).
    #[arg(long)]
    pub careful_accuracy: Option<f64>,
    /// Share of careful annotators who turn careless after `--careless-after-days` ...
    #[arg(long, default_value_t = 0.0)]
    pub careless: f64,
    /// ... days of event time from the start ...
    #[arg(long, default_value_t = 30)]
    pub careless_after_days: u32,
    /// ... when their error rate is multiplied by this.
    #[arg(long, default_value_t = GenSpec::default().careless_factor)]
    pub careless_factor: f64,
    /// Share of gold items first published with a wrong answer and corrected at the end.
    #[arg(long, default_value_t = 0.0)]
    pub wrong_gold: f64,
    /// Mean event-time gap between label events, milliseconds.
    #[arg(long, default_value_t = GenSpec::default().mean_gap_ms)]
    pub mean_gap_ms: f64,
    #[command(flatten)]
    pub preference: gen::preferences::PreferenceArgs,
}

impl GenArgs {
    fn spec(&self) -> GenSpec {
        GenSpec {
            events: self.events,
            annotators: self.annotators,
            labels_per_item: self.labels_per_item,
            classes: self.classes,
            gold_rate: self.gold_rate,
            relabel_rate: self.relabel_rate,
            delete_rate: self.delete_rate,
            spammer_share: self.spammers,
            biased_share: self.biased,
            projects: self.projects,
            tasks: self.tasks,
            numeric_labels: self.numeric,
            seed: self.seed,
            careful_accuracy: self.careful_accuracy,
            careless_share: self.careless,
            careless_from_ms: GenSpec::default().start_ms + i64::from(self.careless_after_days) * 86_400_000,
            careless_factor: self.careless_factor,
            wrong_gold_rate: self.wrong_gold,
            mean_gap_ms: self.mean_gap_ms,
            ..GenSpec::default()
        }
    }
}

fn create(path: &PathBuf) -> Result<Box<dyn Write>> {
    if path.as_os_str() == "-" {
        Ok(Box::new(BufWriter::with_capacity(1 << 20, io::stdout().lock())))
    } else {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Box::new(BufWriter::with_capacity(1 << 20, file)))
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Report(args) => run_report(args),
        Command::Gen(args) => run_gen(args),
        Command::Demo(args) => run_demo(args),
        Command::Run(args) => run_service(args),
        Command::Topics(TopicsCommand::Create(args)) => run_topics(args, true),
        Command::Topics(TopicsCommand::Check(args)) => run_topics(args, false),
    }
}

/// The configuration file (or the defaults), the environment, then the Kafka flags.
fn kafka_config(
    path: Option<&Path>,
    brokers: Option<String>,
    labels_topic: Option<String>,
    gold_topic: Option<String>,
) -> Result<Config> {
    let mut config = Config::from_env(path)?;
    if let Some(brokers) = brokers {
        config.kafka.brokers = brokers;
    }
    if let Some(topic) = labels_topic {
        config.kafka.labels_topic = topic;
    }
    if let Some(topic) = gold_topic {
        config.kafka.gold_topic = topic;
    }
    Ok(config)
}

fn run_topics(args: TopicsArgs, create: bool) -> Result<()> {
    let config = kafka_config(args.config.as_deref(), args.brokers, args.labels_topic, args.gold_topic)?;
    config.validate()?;
    let plan = topics::plan(&config);
    let admin = topics::Admin::new(&config)?;
    if create {
        for name in topics::create(&admin, &plan)? {
            let spec = plan.iter().find(|t| t.name == name).expect("created topics are planned");
            println!("created {}", topics::describe_spec(spec));
        }
    }
    let check = topics::check(&admin, &plan)?;
    for line in check.lines() {
        println!("{line}");
    }
    if check.problems.is_empty() {
        return Ok(());
    }
    let hint = if create {
        "create leaves existing topics as they are: change them with your Kafka tools (kafka-configs \
         --alter), or [topics] to what they are"
    } else {
        "`labelqc topics create` makes the missing ones; change the others with your Kafka tools, or \
         [topics] to what they are"
    };
    Err(topics::TopicsError::Problems { brokers: check.brokers, problems: check.problems, hint }.into())
}

fn run_service(args: RunArgs) -> Result<()> {
    let mut config = kafka_config(args.config.as_deref(), args.brokers, args.labels_topic, args.gold_topic)?;
    if let Some(group) = args.group_id {
        config.kafka.group_id = group;
    }
    if let Some(workers) = args.workers {
        config.engine.workers = workers;
    }
    if let Some(http) = args.http {
        config.http.listen = http;
    }
    if args.exactly_once {
        config.kafka.exactly_once = true;
    }
    if let Some(process) = args.process {
        config.cluster.process = process;
    }
    config.validate()?;
    let stop = crate::signals::install().context("cannot install the SIGTERM and SIGINT handlers")?;
    crate::service::run(&config, stop)
}

fn run_demo(args: DemoArgs) -> Result<()> {
    if args.rate == 0 {
        anyhow::bail!("--rate must be at least 1 event per second");
    }
    if args.workers == 0 {
        anyhow::bail!("--workers must be at least 1");
    }
    let duration = match args.duration {
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
            Some(std::time::Duration::from_secs_f64(seconds))
        }
        Some(seconds) => anyhow::bail!("--duration must be a positive number of seconds, not {seconds}"),
        None => None,
    };
    if !(args.careless_after.is_finite() && args.careless_after >= 0.0) {
        anyhow::bail!("--careless-after must be a number of seconds, 0 or more, not {}", args.careless_after);
    }
    crate::demo::run(&crate::demo::DemoSettings {
        http: args.http,
        rate: args.rate,
        duration,
        traffic: demo_traffic(args.annotators, args.projects, args.tasks, args.seed),
        careless_after: std::time::Duration::from_secs_f64(args.careless_after),
        drift: demo_drift(),
        workers: args.workers,
        windows: crate::config::WindowSettings::default().sizes_ms()?,
        full_screen: !args.lines,
        comparisons: args.comparisons,
    })
}

fn run_gen(args: GenArgs) -> Result<()> {
    if args.preference.preferences {
        let (a, spec) = (&args, &args.preference);
        let spec = spec.spec(a.events, a.annotators, a.labels_per_item, a.seed, a.mean_gap_ms);
        let mut out = create(&args.out)?;
        let written = gen::preferences::generate(&spec, &mut out)?;
        out.flush().context("cannot write preference events")?;
        tracing::info!(preferences = written, systems = spec.systems, "generated");
        return Ok(());
    }
    let spec = args.spec();
    let mut labels = create(&args.out)?;
    let mut gold = args.gold_out.as_ref().map(create).transpose()?;
    let summary = gen::generate(&spec, &mut labels, gold.as_mut().map(|g| g.as_mut() as &mut dyn Write))?;
    labels.flush().context("cannot write label events")?;
    if let Some(mut gold) = gold {
        gold.flush().context("cannot write gold answers")?;
    }
    tracing::info!(
        labels = summary.labels,
        relabels = summary.relabels,
        deletes = summary.deletes,
        items = summary.items,
        gold_items = summary.gold_items,
        "generated"
    );
    Ok(())
}
