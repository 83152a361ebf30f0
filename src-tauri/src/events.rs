//! Typed events for long jobs. Event names are constants shared with the UI through the
//! generated bindings (`EVENTS`), never strings built at the call site; a failed emit (the
//! window closed) is logged, never unwrapped.

use crate::views::{DownloadEvent, ImportEvent, TrainEvent};
use tauri::{AppHandle, Emitter};

/// Name of the event carrying [`DownloadEvent`]s.
pub const DOWNLOAD_EVENT: &str = "download";
/// Name of the event carrying [`TrainEvent`]s.
pub const TRAIN_EVENT: &str = "train";
/// Name of the event carrying [`ImportEvent`]s.
pub const IMPORT_EVENT: &str = "import";

pub fn emit_download(app: &AppHandle, event: DownloadEvent) {
    if let Err(e) = app.emit(DOWNLOAD_EVENT, event) {
        eprintln!("qlora-studio: could not send a download event to the window: {e}");
    }
}

pub fn emit_train(app: &AppHandle, event: TrainEvent) {
    if let Err(e) = app.emit(TRAIN_EVENT, event) {
        eprintln!("qlora-studio: could not send a training event to the window: {e}");
    }
}

pub fn emit_import(app: &AppHandle, event: ImportEvent) {
    if let Err(e) = app.emit(IMPORT_EVENT, event) {
        eprintln!("qlora-studio: could not send an import event to the window: {e}");
    }
}
