//! qlora-hub-testserver
