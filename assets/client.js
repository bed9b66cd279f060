// The forge-gateway browser client: see docs/api.md, "The browser client".
export function connect() {
  throw new Error("not written yet");
}
