// The walking skeleton in a real browser: a counsellor logs in and goes
// available, a patient texts from the phone simulator, the counsellor sees
// the offer (message, risk, reasons), accepts, replies; the reply appears on
// the phone; a second message joins the same conversation; resolve.
// Then an outreach: a partner's referral (published on NATS as the gateway
// does) is offered as an outreach with its referrer, reason and due time;
// on accept the line's introduction reaches the phone naming only the line;
// the person's reply joins it; the counsellor records the outcome; resolve.
// Usage: DASHBOARD=http://… PHONE=http://… NATS_URL=nats://… NATS_PASSWORD_FILE=…
//        SCREENSHOT_DIR=… node walkthrough.mjs
import { chromium } from "playwright-core";
import { connect, headers } from "nats";
import { readFileSync } from "node:fs";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const DASHBOARD = process.env.DASHBOARD ?? "http://127.0.0.1:8090";
const PHONE = process.env.PHONE ?? "http://127.0.0.1:8070";
const SHOTS = process.env.SCREENSHOT_DIR ?? "target/browser";
const PATIENT = "+15005550142";
const DOOR = "+15005550110";
const LINE = "+15005550100";
// Not in the directory, and a phone the phone simulator plays.
const REFERRED = "+15005550144";
const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const NATS_PASSWORD_FILE = process.env.NATS_PASSWORD_FILE;

// A ULID (Crockford base32: 48-bit time, 80 random bits).
function ulid() {
  const A = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  let t = Date.now(), time = "";
  for (let i = 0; i < 10; i++) { time = A[t % 32] + time; t = Math.floor(t / 32); }
  let rand = "";
  for (let i = 0; i < 16; i++) rand += A[Math.floor(Math.random() * 32)];
  return time + rand;
}

// The gateway's contract (proto/src/referral.rs): an InboundReferral in an
// envelope on INBOUND, Nats-Msg-Id "referral:<id>".
async function publishReferral(reason) {
  const nc = await connect({ servers: NATS_URL, user: "operator",
    pass: readFileSync(NATS_PASSWORD_FILE, "utf8").trim() });
  const now = new Date();
  const referral = ulid();
  const envelope = {
    id: ulid(), type: "inbound.referral", time: now.toISOString(), schema: 1,
    data: {
      referral_id: referral, partner: "riverside-reentry", priority: "urgent",
      offer_at: now.toISOString(), due_at: new Date(now.getTime() + 4 * 3600_000).toISOString(),
      patient: { phone: REFERRED, name: "Jordan Avery" }, reason, received_at: now.toISOString(),
    },
  };
  const h = headers();
  h.set("Nats-Msg-Id", `referral:${referral}`);
  nc.publish("nwd.v1.inbound.referral", JSON.stringify(envelope), { headers: h });
  await nc.flush();
  await nc.close();
}
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

  // ---- Outreach: a prison's referral on release day.
  const reason = "released today after three years; history of opioid use";
  await publishReferral(reason);
  const outreach = dash.getByTestId("offer").filter({ has: dash.getByTestId("outreach") });
  await outreach.waitFor({ timeout: 10_000 });
  const referredBy = await outreach.getByTestId("referred-by").textContent();
  if (referredBy !== "Riverside Re-entry Programme") throw new Error(`referred by ${referredBy}`);
  if (!(await outreach.getByTestId("referral-reason").textContent()).includes(reason)) throw new Error("no reason shown");
  await outreach.getByTestId("due").waitFor();
  step("outreach offered: referrer, reason and due time shown");
  await dash.screenshot({ path: join(SHOTS, "dashboard-outreach-offer.png"), fullPage: true });
  await outreach.getByTestId("accept").click();
  const oconv = dash.getByTestId("conversation").filter({ has: dash.getByTestId("outreach") });
  await oconv.waitFor({ timeout: 10_000 });

  await phone.goto(`${PHONE}/?phone=${encodeURIComponent(REFERRED)}`);
  const intro = phone.locator("#conversation").getByText("No Wrong Door", { exact: false });
  await intro.first().waitFor({ timeout: 10_000 });
  const introText = await phone.locator("#conversation").textContent();
  for (const secret of ["Riverside", "Re-entry", "prison", "opioid", "Jordan"]) {
    if (introText.includes(secret)) throw new Error(`the introduction disclosed ${secret}`);
  }
  step("the line's introduction reached the phone, naming only the line");

  await phone.locator("#line").selectOption(LINE);
  const answer = "who is this?";
  await phone.locator("#text").fill(answer);
  await phone.locator("#send").click();
  await oconv.getByText(answer).waitFor({ timeout: 10_000 });
  step("the person's reply joined the outreach");

  await oconv.getByTestId("outcome-reached").click();
  await oconv.locator('[data-testid="outcome-reached"][aria-pressed="true"]').waitFor({ timeout: 10_000 });
  step("outcome recorded");
  await dash.screenshot({ path: join(SHOTS, "dashboard-outreach.png"), fullPage: true });
  dash.once("dialog", (d) => d.accept());
  await oconv.getByTestId("resolve").click();
  await oconv.waitFor({ state: "detached", timeout: 10_000 });
  step("outreach resolved");
  console.log("browser walkthrough passed");
} catch (e) {
  failed = true;
  console.error("browser walkthrough FAILED:", e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
