//! One module per `qlora` subcommand.
