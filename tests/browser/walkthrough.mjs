// The walking skeleton in a real browser: a counsellor logs in and goes
// available, a patient texts from the phone simulator, the counsellor sees
// the offer (message, risk, reasons), accepts, replies; the reply appears on
// the phone; a second message joins the same conversation; resolve.
// Usage: DASHBOARD=http://… PHONE=http://… SCREENSHOT_DIR=… node walkthrough.mjs
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const DASHBOARD = process.env.DASHBOARD ?? "http://127.0.0.1:8090";
const PHONE = process.env.PHONE ?? "http://127.0.0.1:8070";
const SHOTS = process.env.SCREENSHOT_DIR ?? "target/browser";
const PATIENT = "+15005550142";
const DOOR = "+15005550110";
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const step = (s) => console.log(`  - ${s}`);
let failed = false;
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const dash = await ctx.newPage();
  await dash.goto(DASHBOARD);
  await dash.getByTestId("login-username").fill("ana");
  await dash.getByTestId("login-password").fill("ana-demo");
  await dash.getByTestId("login-submit").click();
  await dash.getByTestId("presence-available").click();
  step("counsellor logged in and available");

  const phoneCtx = await browser.newContext({ viewport: { width: 420, height: 800 } });
  const phone = await phoneCtx.newPage();
  await phone.goto(`${PHONE}/?phone=${encodeURIComponent(PATIENT)}`);
  await phone.locator("#line").selectOption(DOOR);
  const first = "I used again after detox and I feel hopeless";
  await phone.locator("#text").fill(first);
  await phone.locator("#send").click();
  step("patient texted the clinic's number");

  const offer = dash.getByTestId("offer").filter({ hasText: first });
  await offer.waitFor({ timeout: 10_000 });
  const risk = await offer.getAttribute("data-risk");
  const reasons = await offer.getByTestId("reason").allTextContents();
  if (!["moderate", "high", "imminent"].includes(risk)) throw new Error(`unexpected risk ${risk}`);
  if (reasons.length === 0) throw new Error("the offer shows no reasons");
  step(`offer shown: risk ${risk}, reasons: ${reasons.join("; ")}`);
  await offer.getByTestId("accept").click();

  const conv = dash.getByTestId("conversation").filter({ hasText: first });
  await conv.waitFor({ timeout: 10_000 });
  const reply = "I'm here with you. Are you safe right now? Do you have naloxone nearby?";
  await conv.getByTestId("reply-input").fill(reply);
  await conv.getByTestId("reply-send").click();
  step("counsellor accepted and replied");

  await phone.locator("#conversation").getByText(reply).waitFor({ timeout: 10_000 });
  step("reply appeared on the phone");

  const second = "yes I have narcan. thank you for answering";
  await phone.locator("#text").fill(second);
  await phone.locator("#send").click();
  await conv.getByText(second).waitFor({ timeout: 10_000 });
  step("second message joined the same conversation");
  await conv.locator('[data-testid="message"][data-status="delivered"]').first().waitFor({ timeout: 10_000 });
  step("delivery status shown");
  // The server names the reply by an id it derives: the page must settle its
  // pending line (browser id) into that one, not show both.
  const mine = await conv.locator('[data-testid="message"][data-speaker="counsellor"]').count();
  if (mine !== 1) throw new Error(`expected one reply line, saw ${mine}`);
  step("one reply line, settled");

  await dash.screenshot({ path: join(SHOTS, "dashboard-conversation.png"), fullPage: true });
  await phone.screenshot({ path: join(SHOTS, "phone-sim.png"), fullPage: true });

  dash.once("dialog", (d) => d.accept()); // "Resolve this conversation?"
  await conv.getByTestId("resolve").click();
  await conv.waitFor({ state: "detached", timeout: 10_000 });
  step("conversation resolved");
  console.log("browser walkthrough passed");
} catch (e) {
  failed = true;
  console.error("browser walkthrough FAILED:", e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
