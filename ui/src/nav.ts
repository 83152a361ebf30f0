/** Goes to a page, with optional parameters (e.g. the model to plan). */
export function go(page: string, params: Record<string, string> = {}): void {
  const q = new URLSearchParams(params).toString();
  location.hash = `#/${page}${q ? `?${q}` : ""}`;
}
