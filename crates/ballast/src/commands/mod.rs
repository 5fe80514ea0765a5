//! One module per subcommand of `ballast`.

mod algorithm_args;
pub(crate) mod balance;
pub(crate) mod bench;
pub(crate) mod echo;
pub(crate) mod lb;
mod table;
