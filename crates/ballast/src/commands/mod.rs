//! One module per subcommand of `ballast`.

mod algorithm_args;
pub(crate) mod balance;
pub(crate) mod bench;
mod table;
