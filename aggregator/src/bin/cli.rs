//! `infrawatch`: the command line for people (see `infrawatch --help`).

fn main() -> std::process::ExitCode {
    infrawatch_aggregator::cli::main()
}
