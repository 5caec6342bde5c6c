// The patient web chat in a real browser: send from the chat page, the
// counsellor accepts and replies, the reply shows; reload and see the
// history; keyboard-only use; axe-core finds no serious or critical
// accessibility violation (English and Spanish); quick exit (Escape) clears
// the screen, the tab's storage and the history entry, and the counsellor is
// told the person left quickly. While waiting, the status shows an honest
// wait estimate; a message shows "Seen" only once the counsellor read it
// (their conversation on screen), and again after a reload.
// Usage: DASHBOARD=http://… CHAT=http://… SCREENSHOT_DIR=… node chat.mjs
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const AXE = require.resolve("axe-core/axe.min.js");
const DASHBOARD = process.env.DASHBOARD ?? "http://127.0.0.1:8090";
const CHAT = process.env.CHAT ?? "http://127.0.0.1:8081";
const SHOTS = process.env.SCREENSHOT_DIR ?? "target/browser";
const DOCS_SHOT = process.env.CHAT_SCREENSHOT;
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const step = (s) => console.log(`  - ${s}`);

async function axe(page, what) {
  // Evaluated through the devtools protocol: the page's CSP allows no inline script.
  await page.evaluate(readFileSync(AXE, "utf8"));
  const result = await page.evaluate(async () => await window.axe.run(document));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) {
    throw new Error(`${what}: accessibility violations ${JSON.stringify(bad.map((v) => [v.id, v.impact, v.nodes.length]))}`);
  }
  step(`${what}: axe-core found no serious or critical violation`);
}

let failed = false;
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const dash = await ctx.newPage();
  await dash.goto(DASHBOARD);
  await dash.getByTestId("login-username").fill("ben");
  await dash.getByTestId("login-password").fill("ben-demo");
  await dash.getByTestId("login-submit").click();
  await dash.getByTestId("presence-available").click();
  step("counsellor logged in and available");

  // Someone else is already waiting (another phone; offered, never accepted).
  const otherCtx = await browser.newContext({ viewport: { width: 390, height: 780 }, isMobile: true, hasTouch: true });
  const other = await otherCtx.newPage();
  await other.goto(`${CHAT}/`);
  await other.locator("#text").fill("hello? is anyone reading these");
  await other.locator("#send").click();
  await other.locator("#log li.me").getByText("Sent ✓").waitFor({ timeout: 10_000 });

  // A phone-sized patient: the chat page of the clinic's door.
  const phoneCtx = await browser.newContext({ viewport: { width: 390, height: 780 }, isMobile: true, hasTouch: true });
  const chat = await phoneCtx.newPage();
  await chat.goto(`${CHAT}/?partner=eastside-clinic`);
  await chat.getByRole("heading", { level: 1 }).waitFor();
  await axe(chat, "chat page (English)");

  // Keyboard only: Tab to the message box, type, Enter sends.
  await chat.locator("body").click({ position: { x: 5, y: 5 } });
  let focused = "";
  for (let i = 0; i < 12 && focused !== "text"; i++) {
    await chat.keyboard.press("Tab");
    focused = await chat.evaluate(() => document.activeElement?.id ?? "");
  }
  if (focused !== "text") throw new Error("the message box is not reachable with Tab");
  const first = "I relapsed and I don't know who to tell";
  await chat.keyboard.type(first);
  await chat.keyboard.press("Enter");
  await chat.locator("#log li.me", { hasText: first }).getByText("Sent ✓").waitFor({ timeout: 10_000 });
  step("patient sent a message with the keyboard only; stored (Sent ✓)");

  // Waiting: the line's figures, in plain words, and how to get help now.
  const waiting = chat.locator("#status");
  await waiting.getByText(/About \d+ people are waiting\./).waitFor({ timeout: 15_000 });
  const words = await waiting.innerText();
  if (!words.includes("a counsellor will answer here") || !words.includes("If you are in danger now, call")) {
    throw new Error(`the wait estimate leaves out what matters: ${words}`);
  }
  if (/nobody|no one/i.test(words)) throw new Error(`the wait estimate says nobody: ${words}`);
  step(`waiting (offered, not yet accepted): "${words}"`);

  const offer = dash.getByTestId("offer").filter({ hasText: first });
  await offer.waitFor({ timeout: 10_000 });
  // Offered is not read: the message is stored, not seen.
  if (await chat.locator("#log li.me", { hasText: first }).getByText("Seen ✓✓").count()) {
    throw new Error("seen before the counsellor opened the conversation");
  }
  await offer.getByTestId("accept").click();
  const conv = dash.getByTestId("conversation").filter({ hasText: first });
  await conv.waitFor({ timeout: 10_000 });
  const reply = "Thank you for telling me. I'm Ben. What would help right now?";
  await conv.getByTestId("reply-input").fill(reply);
  await conv.getByTestId("reply-send").click();
  await chat.locator("#log li.counsellor", { hasText: reply }).waitFor({ timeout: 10_000 });
  await chat.locator("#log li.line", { hasText: "A counsellor has joined" }).waitFor({ timeout: 10_000 });
  step("counsellor accepted and replied; the reply and the joined note show in the chat");
  await chat.locator("#log li.me", { hasText: first }).getByText("Seen ✓✓").waitFor({ timeout: 10_000 });
  if (await other.locator("#log li.me").getByText("Seen ✓✓").count()) {
    throw new Error("a message nobody opened shows seen");
  }
  step("the message shows Seen once the counsellor has the conversation on screen; the other person's does not");
  if (DOCS_SHOT) await chat.screenshot({ path: DOCS_SHOT, fullPage: true });
  await chat.screenshot({ path: join(SHOTS, "chat.png"), fullPage: true });

  // Offline: the message waits in the tab's queue and goes when the network is back.
  await phoneCtx.setOffline(true);
  await chat.locator("#status").getByText(/offline|Connecting/).waitFor({ timeout: 15_000 });
  const offline = "my phone keeps losing signal";
  await chat.locator("#text").fill(offline);
  await chat.locator("#send").click();
  await chat.locator("#log li.me", { hasText: offline }).getByText("Not sent yet", { exact: false }).waitFor({ timeout: 5_000 });
  await phoneCtx.setOffline(false);
  await chat.locator("#log li.me", { hasText: offline }).getByText(/Sent ✓|Seen ✓✓/).waitFor({ timeout: 20_000 });
  await conv.getByText(offline).waitFor({ timeout: 10_000 });
  step("a message written offline was queued and sent on reconnect");

  // Reload: the same conversation, once.
  await chat.reload();
  await chat.locator("#log li.counsellor", { hasText: reply }).waitFor({ timeout: 10_000 });
  await chat.locator("#log li.me", { hasText: first }).waitFor({ timeout: 10_000 });
  const replies = await chat.locator("#log li.counsellor").count();
  const mine = await chat.locator("#log li.me").count();
  if (replies !== 1 || mine !== 2) throw new Error(`after reload: ${mine} own and ${replies} replies, expected 2 and 1`);
  // The line's own notices while waiting (the ladder's acknowledgement) aside.
  const order = await chat.locator("#log li").evaluateAll((els) => els
    .map((e) => e.className !== "line" ? e.className : e.textContent.includes("has joined") ? "joined" : null)
    .filter((c) => c));
  // Written, joined, answered, written offline: in that order, as it happened.
  if (order.join(",") !== "me,joined,counsellor,me") throw new Error(`history out of order: ${order}`);
  await chat.locator("#log li.me", { hasText: first }).getByText("Seen ✓✓").waitFor({ timeout: 10_000 });
  step("reload: history shown in order, nothing doubled, the read mark kept");

  // The counsellor's page out of view: a new message is not read, even
  // when they answer; it is once the page is back in view.
  const visibility = (state) => dash.evaluate((s) => {
    Object.defineProperty(document, "visibilityState", { value: s, configurable: true });
    document.dispatchEvent(new Event("visibilitychange"));
  }, state);
  await visibility("hidden");
  const unread = "are you still there?";
  await chat.locator("#text").fill(unread);
  await chat.locator("#send").click();
  await conv.getByText(unread).waitFor({ timeout: 10_000 });
  const answer = "Yes, I'm still here with you.";
  await conv.getByTestId("reply-input").fill(answer);
  await conv.getByTestId("reply-send").click();
  await chat.locator("#log li.counsellor", { hasText: answer }).waitFor({ timeout: 10_000 });
  await chat.locator("#log li.me", { hasText: unread }).getByText("Sent ✓").waitFor({ timeout: 5_000 });
  await visibility("visible");
  await chat.locator("#log li.me", { hasText: unread }).getByText("Seen ✓✓").waitFor({ timeout: 10_000 });
  step("a message the counsellor's hidden page showed is seen only once the page is in view");

  // Spanish.
  await chat.locator("#lang").click();
  await chat.getByRole("button", { name: "Salida rápida" }).waitFor();
  if ((await chat.evaluate(() => document.documentElement.lang)) !== "es") throw new Error("lang not es");
  await axe(chat, "chat page (Spanish)");

  // Quick exit with Escape.
  const stored = await chat.evaluate(() => sessionStorage.getItem("nwd-chat"));
  if (!stored) throw new Error("the tab should keep the session for a reload before quick exit");
  await chat.keyboard.press("Escape");
  await chat.waitForURL((u) => !u.toString().startsWith(`${CHAT}/?`), { timeout: 10_000 });
  const after = await chat.evaluate(() => ({
    storage: sessionStorage.length + localStorage.length,
    text: document.body ? document.body.innerText : "",
    cookies: document.cookie,
  }));
  if (after.storage !== 0) throw new Error(`storage left after quick exit: ${after.storage} items`);
  if (after.text.includes(first) || after.text.includes(reply)) throw new Error("conversation text left on screen");
  if (after.cookies) throw new Error("a cookie was left");
  const back = await chat.goBack().catch(() => null);
  const url = chat.url();
  if (url.startsWith(`${CHAT}/?`)) throw new Error(`Back returned to the chat (${url})`);
  const text = await chat.evaluate(() => document.body ? document.body.innerText : "");
  if (text.includes(first) || text.includes(reply)) throw new Error("Back shows the conversation");
  step(`quick exit: neutral page, no storage, Back does not return (${back ? "went to " + url : "no earlier entry"})`);

  await conv.getByText("The person left quickly").waitFor({ timeout: 10_000 });
  step("counsellor sees that the person left quickly; the conversation stays open");
  await conv.getByRole("button", { name: "Resolve…" }).click();
  await dash.getByLabel(/How did it end/).selectOption("support-given");
  await dash.getByRole("dialog").getByRole("button", { name: "Resolve", exact: true }).click();
  await conv.waitFor({ state: "detached", timeout: 10_000 });

  // The demo partner page embeds the chat with two lines of HTML.
  const partner = await phoneCtx.newPage();
  await partner.goto(`${CHAT}/demo`);
  await partner.getByRole("button", { name: "Chat with us" }).click();
  const frame = partner.frameLocator("iframe");
  await frame.getByRole("heading", { level: 1 }).waitFor({ timeout: 10_000 });
  step("demo partner page opens the embedded chat");
  // Quick exit inside the frame replaces the partner's whole page.
  await frame.locator("#text").click();
  await partner.keyboard.press("Escape");
  // The frame and the embed script both replace the page: one navigation
  // may abort the other, so wait for the URL to change rather than a load.
  for (let i = 0; i < 100 && partner.url().endsWith("/demo"); i++) {
    await partner.waitForURL((u) => !u.toString().endsWith("/demo"), { timeout: 200, waitUntil: "commit" }).catch(() => {});
  }
  if (partner.url().endsWith("/demo")) throw new Error("quick exit left the partner page in place");
  if (await partner.locator("iframe").count()) throw new Error("the chat frame is still there");
  step(`quick exit in the embedded chat replaced the partner page (now ${partner.url()})`);
  // The other person still waits; in Spanish the estimate is in Spanish.
  await other.locator("#lang").click();
  await other.locator("#status").getByText(/Tu mensaje está con la línea.*Si estás en peligro ahora, llama al 911/).waitFor({ timeout: 10_000 });
  step(`waiting, in Spanish: "${await other.locator("#status").innerText()}"`);
  await otherCtx.close();
  console.log("browser chat walkthrough passed");
} catch (e) {
  failed = true;
  console.error("browser chat walkthrough FAILED:", e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
