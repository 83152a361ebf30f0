// The only door to the shell: a typed `call` over the generated `Commands` map, typed event
// listeners, and errors normalised to the shell's { code, message }.
import { Channel, invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";
import type { AppError, Commands, EventPayloads } from "./bindings";
import { EVENTS } from "./bindings";

export { Channel };

/** Turns whatever a rejected invoke carried into an AppError. */
export function toAppError(e: unknown): AppError {
  if (e && typeof e === "object" && "code" in e && "message" in e) return e as AppError;
  return { code: "internal", message: e instanceof Error ? e.message : String(e) };
}

/** Calls a shell command with its typed arguments; rejects with an AppError. */
export async function call<K extends keyof Commands>(cmd: K, args: Commands[K]["args"]): Promise<Commands[K]["result"]> {
  try {
    return await invoke<Commands[K]["result"]>(cmd, args as Record<string, unknown>);
  } catch (e) {
    throw toAppError(e);
  }
}

/** Listens to one of the typed job events. */
export function onEvent<K extends keyof EventPayloads>(name: K, handler: (payload: EventPayloads[K]) => void): Promise<UnlistenFn> {
  return listen<EventPayloads[K]>(EVENTS[name], (e) => handler(e.payload));
}
