/**
 * Opens a local HTML file in headless Chromium (Debian package `chromium`) and returns a
 * screenshot plus every error the page produced. Test helper; holds no tests.
 *
 * How errors are caught: Chromium is started with `--remote-debugging-port=0` and driven over
 * the DevTools protocol (a WebSocket; Deno has one built in). Before navigating we enable the
 * Runtime and Log domains, so the page's own reports arrive as typed events with a level:
 * `Runtime.consoleAPICalled` (console.error / console.assert), `Runtime.exceptionThrown`
 * (uncaught exceptions) and `Log.entryAdded` with level "error" (what DevTools shows in red
 * without a script: failed resource loads such as a missing image or a blocked external URL,
 * security and parser errors). Grepping `--enable-logging=stderr` output instead was tried and
 * rejected: it prints every console message as INFO without its level and does not show failed
 * resource loads at all. The screenshot comes from `Page.captureScreenshot` of a fixed
 * 1200 x 1600 viewport in the same session, so one browser start gives both.
 */

/** What a page produced in headless Chromium. */
export interface PageCapture {
  /** PNG bytes of the viewport after the load event. */
  screenshot: Uint8Array;
  /** Console errors, uncaught exceptions and error-level log entries, one line each. */
  errors: string[];
  /** Console warnings and warning-level log entries (reported, not failures). */
  warnings: string[];
}

/** The `chromium` executable on PATH, or null when it is not installed. */
export function findChromium(): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!dir) continue;
    const path = `${dir}/chromium`;
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // not in this folder
    }
  }
  return null;
}

interface CdpMessage {
  id?: number;
  method?: string;
  params?: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: { message: string };
  sessionId?: string;
}

function describeRemoteArgs(args: unknown): string {
  return ((args as { value?: unknown; description?: string }[]) ?? [])
    .map((a) => a.value !== undefined ? String(a.value) : a.description ?? "?").join(" ");
}

/**
 * Loads `url` (a file: URL) in a fresh headless Chromium profile with a `width` x `height`
 * viewport, waits for the load event, and returns the screenshot and the page's errors.
 * Throws if Chromium does not start or the page does not load within `timeoutMs`.
 */
export async function capturePage(
  chromium: string,
  url: string,
  width = 1200,
  height = 1600,
  timeoutMs = 60_000,
): Promise<PageCapture> {
  const profile = await Deno.makeTempDir({ prefix: "report-chromium-" });
  const child = new Deno.Command(chromium, {
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--hide-scrollbars",
      `--user-data-dir=${profile}`,
      `--window-size=${width},${height}`,
      "--remote-debugging-port=0",
      "about:blank",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let stderrText = "";
  let announce: (wsUrl: string) => void = () => {};
  const wsUrlPromise = new Promise<string>((resolve) => announce = resolve);
  const stderrDone = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      stderrText += chunk;
      const m = stderrText.match(/DevTools listening on (ws:\/\/\S+)/);
      if (m) announce(m[1]);
    }
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`chromium: no result within ${timeoutMs} ms; stderr:\n${stderrText}`)),
      timeoutMs,
    );
  });
  let ws: WebSocket | undefined;
  try {
    return await Promise.race([timeout, drive()]);
  } finally {
    clearTimeout(timer);
    if (ws && ws.readyState === WebSocket.OPEN) ws.close();
    try {
      child.kill("SIGKILL");
    } catch {
      // already exited
    }
    await child.status;
    await stderrDone;
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  }

  async function drive(): Promise<PageCapture> {
    const exited = child.status.then((s) => {
      throw new Error(`chromium exited (code ${s.code}) before DevTools started:\n${stderrText}`);
    });
    const wsUrl = await Promise.race([wsUrlPromise, exited]);
    const socket = ws = new WebSocket(wsUrl);
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onerror = () => reject(new Error(`chromium: cannot connect to ${wsUrl}`));
    });
    let nextId = 0;
    const pending = new Map<number, (m: CdpMessage) => void>();
    const errors: string[] = [];
    const warnings: string[] = [];
    let loaded: () => void = () => {};
    const loadEvent = new Promise<void>((resolve) => loaded = resolve);
    socket.onmessage = (e) => {
      const msg = JSON.parse(e.data as string) as CdpMessage;
      if (msg.id !== undefined) {
        pending.get(msg.id)?.(msg);
        pending.delete(msg.id);
        return;
      }
      const p = msg.params ?? {};
      if (msg.method === "Page.loadEventFired") loaded();
      if (msg.method === "Runtime.consoleAPICalled") {
        const line = `console.${p.type}: ${describeRemoteArgs(p.args)}`;
        if (p.type === "error" || p.type === "assert") errors.push(line);
        else if (p.type === "warning") warnings.push(line);
      }
      if (msg.method === "Runtime.exceptionThrown") {
        const d = p.exceptionDetails as { text: string; exception?: { description?: string } };
        errors.push(`exception: ${d.text} ${d.exception?.description ?? ""}`.trim());
      }
      if (msg.method === "Log.entryAdded") {
        const entry = p.entry as { level: string; source: string; text: string; url?: string };
        const line = `${entry.source}: ${entry.text}${entry.url ? ` (${entry.url})` : ""}`;
        if (entry.level === "error") errors.push(line);
        else if (entry.level === "warning") warnings.push(line);
      }
    };
    const send = (method: string, params: Record<string, unknown> = {}, sessionId?: string) => {
      const id = ++nextId;
      socket.send(JSON.stringify({ id, method, params, sessionId }));
      return new Promise<Record<string, unknown>>((resolve, reject) =>
        pending.set(
          id,
          (m) =>
            m.error
              ? reject(new Error(`chromium: ${method}: ${m.error.message}`))
              : resolve(m.result!),
        )
      );
    };
    const target = await send("Target.createTarget", { url: "about:blank" });
    const attached = await send("Target.attachToTarget", {
      targetId: target.targetId,
      flatten: true,
    });
    const session = attached.sessionId as string;
    await send("Runtime.enable", {}, session);
    await send("Log.enable", {}, session);
    await send("Page.enable", {}, session);
    await send(
      "Emulation.setDeviceMetricsOverride",
      { width, height, deviceScaleFactor: 1, mobile: false },
      session,
    );
    await send("Page.navigate", { url }, session);
    await loadEvent;
    const shot = await send("Page.captureScreenshot", { format: "png" }, session);
    await send("Browser.close").catch(() => {});
    const bytes = Uint8Array.from(atob(shot.data as string), (c) => c.charCodeAt(0));
    return { screenshot: bytes, errors, warnings };
  }
}
