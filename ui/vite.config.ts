import { defineConfig } from "vitest/config";

// The UI is served by Tauri from ui/dist (see ../tauri.conf.json); no inline scripts or styles,
// so the strict CSP holds.
export default defineConfig({
  clearScreen: false,
  server: { port: 5173, strictPort: true },
  build: { outDir: "dist", emptyOutDir: true, target: "safari15", sourcemap: false },
  test: { include: ["src/**/*.test.ts"], environment: "node" },
});
