// A counsellor's shift in a real browser, selected by accessible role and
// name: log in and go available (status: load against capacity, shift end);
// a patient texts from the phone simulator; the queue shows the waiting
// contact with its risk label; the offer takes focus (sound, a notification
// without any message text); accept, reply and see the delivery status —
// keyboard only; run the C-SSRS screener and see the level change; "take the
// next most urgent" with a second waiting contact (two tabs); resolve both
// with a disposition (one keyboard only). axe-core finds no serious or
// critical violation on any view; screenshots of the main views.
// Then an outreach: a partner's referral (published on NATS as the gateway
// does) is offered as an outreach with its referrer, reason and due time;
// on accept the line's introduction reaches the phone naming only the line;
// the person's reply joins it; the counsellor records the outcome; resolve.
// Usage: DASHBOARD=http://… PHONE=http://… NATS_URL=nats://… NATS_PASSWORD_FILE=…
//        SCREENSHOT_DIR=… [DOCS_SCREENSHOT_DIR=docs/screenshots] node walkthrough.mjs
import { chromium } from "playwright-core";
import { connect, headers } from "nats";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const AXE = require.resolve("axe-core/axe.min.js");

const DASHBOARD = process.env.DASHBOARD ?? "http://127.0.0.1:8090";
const PHONE = process.env.PHONE ?? "http://127.0.0.1:8070";
const SHOTS = process.env.SCREENSHOT_DIR ?? "target/browser";
// The screenshots the docs show (dashboard-queue, -conversation, -screener).
const DOCS_SHOTS = process.env.DOCS_SCREENSHOT_DIR;
// The steps that need the router's queue snapshots, "take the next" and the
// screener's Assess command (router): WALKTHROUGH_ROUTER_QUEUE=0 turns them off.
const ROUTER_QUEUE = process.env.WALKTHROUGH_ROUTER_QUEUE !== "0";
const PATIENT = "+15005550142";
const SECOND_PATIENT = "+15005550143";
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
if (DOCS_SHOTS) mkdirSync(DOCS_SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const step = (s) => console.log(`  - ${s}`);

async function axe(page, what) {
  // Evaluated through the devtools protocol: the page's CSP allows no other script.
  await page.evaluate(readFileSync(AXE, "utf8"));
  const result = await page.evaluate(async () => await window.axe.run(document));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) {
    throw new Error(`${what}: accessibility violations ${JSON.stringify(bad.map((v) => [v.id, v.impact, v.nodes.map((n) => n.target)]))}`);
  }
  step(`${what}: axe-core found no serious or critical violation`);
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, name), fullPage: true });
  if (DOCS_SHOTS) await page.screenshot({ path: join(DOCS_SHOTS, name), fullPage: true });
}

// The element that has the keyboard focus, by test id.
const focusedTestId = (page) => page.evaluate(() => document.activeElement?.dataset?.testid ?? document.activeElement?.tagName);
async function focusReaches(page, testid, maxTabs = 8) {
  for (let i = 0; i < maxTabs; i++) {
    if ((await focusedTestId(page)) === testid) return;
    await page.keyboard.press("Tab");
  }
  if ((await focusedTestId(page)) !== testid) throw new Error(`Tab did not reach ${testid}`);
}

async function text(phone, line, body) {
  await phone.locator("#line").selectOption(line);
  await phone.locator("#text").fill(body);
  await phone.locator("#send").click();
}

const RISK_LABEL = /^(‼|▲|◆|●)?\s*(Imminent|High|Moderate|Low) risk$/;
let failed = false;
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const dash = await ctx.newPage();
  // Record desktop notifications instead of showing them (permission granted).
  await dash.addInitScript(() => {
    window.__notifications = [];
    window.Notification = function (title, options) { window.__notifications.push({ title, body: options?.body ?? "" }); };
    window.Notification.permission = "granted";
    window.Notification.requestPermission = async () => "granted";
  });
  await dash.goto(DASHBOARD);
  await dash.getByRole("heading", { level: 1 }).waitFor();
  await axe(dash, "login");
  await dash.getByLabel("Username").fill("ana");
  await dash.getByLabel("Password").fill("ana-demo");
  await dash.getByRole("button", { name: "Log in" }).click();
  const status = dash.getByRole("region", { name: "My status" });
  await status.getByRole("button", { name: "Available", exact: true }).click();
  await status.getByRole("button", { name: "Available", exact: true, pressed: true }).waitFor();
  await status.getByText("0 of 3").waitFor();
  step("counsellor logged in and available; load 0 of 3 shown");

  const phoneCtx = await browser.newContext({ viewport: { width: 420, height: 800 } });
  const phone = await phoneCtx.newPage();
  await phone.goto(`${PHONE}/?phone=${encodeURIComponent(PATIENT)}`);
  const first = "I used again after detox and I feel hopeless";
  await text(phone, DOOR, first);
  step("patient texted the clinic's number");

  const offer = dash.getByRole("article", { name: /^New contact/ }).filter({ hasText: first });
  await offer.waitFor({ timeout: 10_000 });
  const risk = await offer.getAttribute("data-risk");
  const reasons = await offer.getByRole("list", { name: "Triage reasons" }).getByRole("listitem").allTextContents();
  if (!["moderate", "high", "imminent"].includes(risk)) throw new Error(`unexpected risk ${risk}`);
  if (reasons.length === 0) throw new Error("the offer shows no reasons");
  if (!RISK_LABEL.test((await offer.getByTestId("risk").textContent()).trim())) throw new Error("no risk label on the offer");
  step(`offer shown: risk ${risk}, reasons: ${reasons.join("; ")}`);
  await dash.waitForFunction(() => document.activeElement?.dataset?.testid === "offer", null, { timeout: 5_000 });
  step("the offer took the keyboard focus");
  const notes = await dash.evaluate(() => window.__notifications);
  const note = notes.map((n) => n.title + n.body).join(" | ");
  if (!/New contact waiting — (imminent|high|moderate|low) risk/.test(note)) throw new Error(`notification: ${note}`);
  if (note.includes("detox") || note.includes("hopeless")) throw new Error("the notification carries message text");
  step(`desktop notification without message text: "${notes[0].title}"`);
  await axe(dash, "offer");

  if (ROUTER_QUEUE) {
    const queue = dash.getByRole("list", { name: "Waiting contacts, most urgent first" });
    const entry = queue.getByRole("listitem").filter({ has: dash.getByText("Offered to you") });
    await entry.first().waitFor({ timeout: 10_000 });
    const label = (await entry.first().getByTestId("risk").textContent()).trim();
    if (!RISK_LABEL.test(label)) throw new Error(`queue entry risk label: ${label}`);
    await entry.first().getByText(/^waiting \d+/).waitFor();
    step(`the queue shows the waiting contact: ${label}, marked as offered to her, wait ticking`);
    await axe(dash, "status and queue");
    await shot(dash, "dashboard-queue.png");
  }

  // ---- Keyboard only: Tab from the focused offer to Accept, Enter; the
  // reply box gets the cursor; Enter sends.
  await dash.keyboard.press("Tab");
  await focusReaches(dash, "accept");
  await dash.keyboard.press("Enter");
  const conv = dash.getByRole("tabpanel").filter({ hasText: first });
  await conv.waitFor({ timeout: 10_000 });
  await dash.waitForFunction(() => document.activeElement?.dataset?.testid === "reply-input", null, { timeout: 5_000 });
  const reply = "I'm here with you. Are you safe right now? Do you have naloxone nearby?";
  await dash.keyboard.type(reply);
  await dash.keyboard.press("Enter");
  step("accepted and replied with the keyboard only");
  await status.getByText("1 of 3").waitFor();

  await phone.locator("#conversation").getByText(reply).waitFor({ timeout: 10_000 });
  step("reply appeared on the phone");

  const second = "yes I have narcan. thank you for answering";
  await text(phone, DOOR, second);
  await conv.getByText(second).waitFor({ timeout: 10_000 });
  step("second message joined the same conversation");
  await conv.getByRole("log", { name: "Conversation history" }).getByText(/✓✓ delivered/).first().waitFor({ timeout: 10_000 });
  step("delivery status shown");
  // The server names the reply by an id it derives: the page must settle its
  // pending line (browser id) into that one, not show both.
  const mine = await conv.locator('[data-testid="message"][data-speaker="counsellor"]').count();
  if (mine !== 1) throw new Error(`expected one reply line, saw ${mine}`);
  step("one reply line, settled");
  await axe(dash, "conversation");
  await shot(dash, "dashboard-conversation.png");
  await phone.screenshot({ path: join(SHOTS, "phone-sim.png"), fullPage: true });

  // ---- The screener: 3–5 appear only after yes to 2, 6b only after yes to 6.
  await conv.getByRole("button", { name: "Screener" }).click();
  const screener = conv.getByRole("region", { name: "C-SSRS screener" });
  const question = (n) => screener.getByRole("group", { name: new RegExp(`^${n}\\. `) });
  const answerQ = (n, yes) => question(n).getByRole("radio", { name: yes ? "Yes" : "No" }).check();
  if (await question("3").isVisible()) throw new Error("question 3 shown before yes to 2");
  await answerQ("1", true);
  await answerQ("2", true);
  await question("3").waitFor();
  await answerQ("3", true);
  await answerQ("4", false);
  await answerQ("5", false);
  await answerQ("6", false);
  if (await question("6b").isVisible()) throw new Error("question 6b shown after no to 6");
  await screener.getByText("These answers give: moderate risk").waitFor();
  step("screener: follow-up questions appear by the skip logic; the answers give moderate");
  await axe(dash, "screener");
  if (ROUTER_QUEUE) {
    await screener.getByRole("button", { name: "Record screener result" }).click();
    await conv.getByText(/Screened: moderate by Ana/).waitFor({ timeout: 10_000 });
    await conv.getByTestId("risk").filter({ hasText: "Moderate risk" }).waitFor();
    step(`the level changed: ${(await conv.getByTestId("levels").textContent()).trim()}`);
  }
  await shot(dash, "dashboard-screener.png");

  // ---- "Take the next most urgent" with a second person waiting.
  if (ROUTER_QUEUE) {
    const phone2 = await phoneCtx.newPage();
    await phone2.goto(`${PHONE}/?phone=${encodeURIComponent(SECOND_PATIENT)}`);
    const other = "been craving all day and feeling really low";
    await text(phone2, LINE, other);
    await dash.getByRole("listitem").filter({ has: dash.getByTestId("risk") }).nth(0).waitFor({ timeout: 10_000 });
    const take = dash.getByRole("button", { name: "Take the next most urgent" });
    await take.click();
    const tab2 = dash.getByRole("tab", { selected: true }).filter({ hasNotText: "··42" });
    await tab2.waitFor({ timeout: 10_000 });
    const conv2 = dash.getByRole("tabpanel").filter({ hasText: other });
    await conv2.waitFor({ timeout: 10_000 });
    await status.getByText("2 of 3").waitFor();
    step("took the next most urgent: a second conversation opened in its own tab");
    if ((await dash.getByRole("tab").count()) !== 2) throw new Error("expected two conversation tabs");

    // A message in the tab not shown counts as unread until it is opened.
    await text(phone, DOOR, "are you still there?");
    const firstTab = dash.getByRole("tab").filter({ hasText: "··42" });
    await firstTab.getByTestId("unread").filter({ hasText: "1" }).waitFor({ timeout: 10_000 });
    step("the other tab shows 1 unread");

    await conv2.getByRole("button", { name: "Resolve…" }).click();
    const dialog = dash.getByRole("dialog", { name: "Resolve the conversation" });
    await dialog.waitFor();
    await axe(dash, "resolve dialog");
    await dialog.getByLabel(/How did it end/).selectOption({ label: "Support given" });
    await dialog.getByLabel(/Closing note/).fill("Talked through the cravings; will text tomorrow.");
    await dialog.getByRole("button", { name: "Resolve", exact: true }).click();
    await conv2.waitFor({ state: "detached", timeout: 10_000 });
    step("second conversation resolved with a disposition and a note");
    await firstTab.click();
    await dash.getByRole("tab", { selected: true }).filter({ hasText: "··42" }).waitFor();
    if (await firstTab.getByTestId("unread").count()) throw new Error("opening the tab did not clear its unread count");
  }

  // ---- Resolve the first, keyboard only: from the reply box Tab to
  // "Resolve…", Enter; pick a disposition with the arrows; Tab to the note;
  // Tab to Resolve; Enter.
  await conv.getByRole("textbox", { name: "Reply" }).focus();
  await focusReaches(dash, "resolve");
  await dash.keyboard.press("Enter");
  const dialog = dash.getByRole("dialog", { name: "Resolve the conversation" });
  await dialog.waitFor();
  if (!ROUTER_QUEUE) await axe(dash, "resolve dialog");
  if ((await focusedTestId(dash)) !== "disposition") throw new Error("the dialog did not focus the disposition");
  // An empty disposition is refused: the dialog stays open.
  await focusReaches(dash, "resolve-confirm");
  await dash.keyboard.press("Enter");
  if (!(await dialog.isVisible())) throw new Error("resolved without a disposition");
  await dash.getByLabel(/How did it end/).focus();
  await dash.keyboard.press("ArrowDown");
  await dash.keyboard.press("ArrowDown");
  await dash.keyboard.press("Tab");
  await dash.keyboard.type("Safety plan written together; naloxone at hand.");
  await focusReaches(dash, "resolve-confirm");
  await dash.keyboard.press("Enter");
  await conv.waitFor({ state: "detached", timeout: 10_000 });
  await status.getByText("0 of 3").waitFor();
  step("first conversation resolved with a disposition, keyboard only");

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
  await oconv.getByRole("button", { name: "Resolve…" }).click();
  await dash.getByLabel(/How did it end/).selectOption("referred-to-treatment");
  await dash.getByRole("dialog").getByRole("button", { name: "Resolve", exact: true }).click();
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
