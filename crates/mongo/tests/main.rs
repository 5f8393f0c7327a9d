mod common;
mod dump;
mod replay;
