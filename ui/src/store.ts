// App-wide state the pages share: settings, the machine, downloads in flight and the current
// training run. A tiny subscribe/notify store; pages re-render their own parts on change.
import type { AppError, Settings, SystemInfo } from "./bindings";
import { call, onEvent } from "./api";
import { reduceDownload, reduceImport, reduceTrain, blankTrain, resumedTrain, type Downloads, type Imports, type TrainState } from "./lib/reducers";

export interface State {
  settings: Settings | null;
  system: SystemInfo | null;
  systemError: AppError | null;
  downloads: Downloads;
  imports: Imports;
  training: TrainState | null;
}

export const state: State = { settings: null, system: null, systemError: null, downloads: {}, imports: {}, training: null };

type Listener = () => void;
const listeners = new Set<Listener>();

export function subscribe(fn: Listener): () => void {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function notify(): void {
  for (const fn of [...listeners]) fn();
}

export async function loadSettings(): Promise<void> {
  state.settings = await call("get_settings", {});
  notify();
}

export async function loadSystem(): Promise<void> {
  try {
    state.system = await call("system_info", {});
    state.systemError = null;
  } catch (e) {
    state.systemError = e as AppError;
  }
  notify();
}

/** A new training job; `resume` carries the current run's curves over (the same output folder). */
export function startTraining(job: number, resume = false): void {
  state.training = resume ? resumedTrain(state.training, job) : blankTrain(job);
  notify();
}

/** Wires the job events into the store once, at start. */
export async function listenToJobs(): Promise<void> {
  await onEvent("download", (ev) => {
    state.downloads = reduceDownload(state.downloads, ev);
    notify();
  });
  await onEvent("import", (ev) => {
    state.imports = reduceImport(state.imports, ev);
    notify();
  });
  await onEvent("train", (ev) => {
    if (state.training) {
      state.training = reduceTrain(state.training, ev);
      notify();
    }
  });
}
