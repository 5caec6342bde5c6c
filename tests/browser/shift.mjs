// A shift with three people on the floor, in three browser contexts, on the
// real line, selected by accessible role and name:
// - Ana (counsellor) takes a text from María, sees her profile (programme,
//   coordinator, trusted contact and whether consent covers involving her,
//   earlier contacts), inserts a safety-planning snippet into her reply and
//   writes a private note that stays in the history and never reaches the phone;
// - Ana's network drops (the context goes offline); María writes meanwhile;
//   back online, the page resumes and shows her message exactly once;
// - Sam (supervisor) sees everyone on shift and the conversation in progress,
//   monitors it silently (history, the note, a new line; no reply box) and
//   stops;
// - Ana hands the conversation to Ben with a warm transfer, keyboard only;
//   she sees "Waiting for Ben Okafor to accept…"; Ben's offer says
//   "Transfer from Ana García (warm)" with the handover note; he accepts and
//   Ana's tab closes with a polite announcement; Sam reassigns it to Ana;
// - Sam holds every waiting contact with the switchboard: a new text is
//   shown held in the queue and offered to no counsellor; "Release them"
//   and it is offered;
// - a person in the web chat leaves with the quick exit before anyone
//   answers: they are in Ana's follow-ups with "answer in the chat only";
//   "I'm reaching out" makes it her conversation.
// axe-core finds no serious or critical violation on each new view;
// screenshots dashboard-profile, -supervisor, -transfer.
// The steps that need the router's handovers and the dashboard's server side
// (profile, notes, floor, monitoring, transfer, switchboard):
// SHIFT_SERVER_SIDE=0 turns them off (snippets and the network drop still run);
// SHIFT_SKIP=profile,note,floor,monitor,transfer,reassign,switchboard,follow-up turns off some.
// Usage: DASHBOARD=http://… PHONE=http://… CHAT=http://… SCREENSHOT_DIR=… [DOCS_SCREENSHOT_DIR=docs/screenshots] node shift.mjs
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const DASHBOARD = process.env.DASHBOARD ?? "http://127.0.0.1:8090";
const PHONE = process.env.PHONE ?? "http://127.0.0.1:8070";
const CHAT = process.env.CHAT ?? "http://127.0.0.1:8081";
const SHOTS = process.env.SCREENSHOT_DIR ?? "target/browser";
const DOCS_SHOTS = process.env.DOCS_SCREENSHOT_DIR;
const SERVER_SIDE = process.env.SHIFT_SERVER_SIDE !== "0";
const SKIP = new Set((process.env.SHIFT_SKIP ?? "").split(",").map((x) => x.trim()).filter(Boolean));
const runs = (part) => SERVER_SIDE && !SKIP.has(part);
// María (demo directory: Eastside's patient, sister Lucía with a consent).
const MARIA = "+15005550142";
const JAMES = "+15005550143";
const EASTSIDE = "+15005550110";
const LINE = "+15005550100";

mkdirSync(SHOTS, { recursive: true });
if (DOCS_SHOTS) mkdirSync(DOCS_SHOTS, { recursive: true });
const step = (s) => console.log(`  - ${s}`);

async function axe(page, what) {
  // Through the devtools protocol: the page's CSP allows no other script.
  await page.evaluate(AXE);
  const result = await page.evaluate(async () => await window.axe.run(document));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) {
    throw new Error(`${what}: accessibility violations ${JSON.stringify(bad.map((v) => [v.id, v.impact, v.nodes.map((n) => n.target)]))}`);
  }
  step(`${what}: axe-core found no serious or critical violation`);
}
// fullPage: false for a modal dialog (its backdrop covers the viewport only).
async function shot(page, name, fullPage = true) {
  await page.screenshot({ path: join(SHOTS, name), fullPage });
  if (DOCS_SHOTS) await page.screenshot({ path: join(DOCS_SHOTS, name), fullPage });
}
const focusedTestId = (page) => page.evaluate(() => document.activeElement?.dataset?.testid ?? document.activeElement?.tagName);
async function focusReaches(page, testid, maxTabs = 12) {
  for (let i = 0; i < maxTabs; i++) {
    if ((await focusedTestId(page)) === testid) return;
    await page.keyboard.press("Tab");
  }
  if ((await focusedTestId(page)) !== testid) throw new Error(`Tab did not reach ${testid}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

async function staff(id) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  page.on("dialog", (d) => d.accept());
  await page.goto(DASHBOARD);
  await page.getByLabel("Username").fill(id);
  await page.getByLabel("Password").fill(`${id}-demo`);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByTestId("connection").filter({ hasText: "connected" }).waitFor({ timeout: 10_000 });
  return { ctx, page };
}
async function available(page) {
  const status = page.getByRole("region", { name: "My status" });
  await status.getByRole("button", { name: "Available", exact: true }).click();
  await status.getByRole("button", { name: "Available", exact: true, pressed: true }).waitFor();
}
async function phoneOf(number) {
  const page = await phoneCtx.newPage();
  await page.goto(`${PHONE}/?phone=${encodeURIComponent(number)}`);
  return page;
}
async function text(phone, line, body) {
  await phone.locator("#line").selectOption(line);
  await phone.locator("#text").fill(body);
  await phone.locator("#send").click();
}
// Resolves the conversation that shows `text`, opening its tab first (it
// may not be the one shown).
async function resolve(page, text) {
  const panel = page.getByTestId("conversation").filter({ hasText: text });
  const id = await panel.getAttribute("data-contact-id", { timeout: 10_000 });
  await page.locator(`[role="tab"][data-contact-id="${id}"]`).click();
  const conv = page.getByRole("tabpanel").filter({ hasText: text });
  await conv.getByRole("button", { name: "Resolve…" }).click();
  const dialog = page.getByRole("dialog", { name: "Resolve the conversation" });
  await dialog.getByLabel(/How did it end/).selectOption("support-given");
  await dialog.getByRole("button", { name: "Resolve", exact: true }).click();
  await panel.waitFor({ state: "detached", timeout: 10_000 });
}

let phoneCtx;
let failed = false;
try {
  phoneCtx = await browser.newContext({ viewport: { width: 420, height: 800 } });
  const ana = await staff("ana");
  await available(ana.page);
  step("Ana logged in and available");

  // ---- María writes; Ana accepts.
  const maria = await phoneOf(MARIA);
  const first = "I can't stop thinking about using tonight and I feel so alone";
  await text(maria, EASTSIDE, first);
  const offer = ana.page.getByRole("article", { name: /^New contact/ }).filter({ hasText: first });
  await offer.waitFor({ timeout: 15_000 });
  await offer.getByRole("button", { name: "Accept" }).click();
  const conv = ana.page.getByRole("tabpanel").filter({ hasText: first });
  await conv.waitFor({ timeout: 10_000 });
  step("Ana accepted María's text");

  // ---- The profile beside the conversation.
  if (runs("profile")) {
    const profile = conv.getByRole("region", { name: "The person" });
    await profile.getByText("María López").waitFor({ timeout: 10_000 });
    await profile.getByText("Eastside Recovery Clinic").waitFor();
    const involve = profile.getByRole("button", { name: "Involve Lucía López" });
    await involve.waitFor();
    if (await involve.isDisabled()) throw new Error("María's consent covers her sister, yet Involve is disabled");
    await profile.getByText(/consent covers telling them now/).waitFor();
    step("profile: name, programme, coordinator; Lucía (sister) can be involved under María's consent");
    await axe(ana.page, "conversation with profile");
    await shot(ana.page, "dashboard-profile.png");
  }

  // ---- A snippet into the reply box, then sent.
  await conv.getByLabel("Safety-planning snippet").selectOption("warning-signs");
  await conv.getByRole("button", { name: "Insert into reply" }).click();
  const replyBox = conv.getByRole("textbox", { name: "Reply" });
  const snippet = "Let's make a plan together for the next time it gets this hard.";
  if (!(await replyBox.inputValue()).startsWith(snippet)) throw new Error(`reply box: ${await replyBox.inputValue()}`);
  if ((await focusedTestId(ana.page)) !== "reply-input") throw new Error("the snippet did not put the cursor in the reply box");
  await ana.page.keyboard.press("Enter");
  await maria.locator("#conversation").getByText(snippet, { exact: false }).waitFor({ timeout: 10_000 });
  step("a safety-planning snippet went into the reply box and reached the phone");

  // ---- A private note: in the history, marked, never on the phone.
  const privateNote = "Has naloxone at home; her sister Lucía is her main support.";
  if (runs("note")) {
    await conv.getByLabel("Private note — never sent to the person").fill(privateNote);
    await conv.getByRole("button", { name: "Add private note" }).click();
    const noted = conv.getByRole("log", { name: "Conversation history" }).getByTestId("note").filter({ hasText: privateNote });
    await noted.waitFor({ timeout: 10_000 });
    if (!(await noted.textContent()).includes("never sent to the person")) throw new Error("the note is not marked private");
    step("private note shown in the history, marked as never sent");
  }

  // ---- Ana's network drops; María writes meanwhile; nothing is lost.
  await ana.ctx.setOffline(true);
  await ana.page.getByTestId("connection").filter({ hasText: "reconnecting" }).waitFor({ timeout: 10_000 });
  const meanwhile = "ok. I put the pills in the car like you said";
  await text(maria, EASTSIDE, meanwhile);
  await maria.locator("#conversation").getByText(meanwhile).waitFor({ timeout: 10_000 });
  // Give the line time to route it to the dropped page (it must not arrive there).
  await ana.page.waitForTimeout(1500);
  if (await conv.getByText(meanwhile).count()) throw new Error("the message arrived while offline: the drop was not real");
  await ana.ctx.setOffline(false);
  await ana.page.getByTestId("connection").filter({ hasText: /^connected$/ }).waitFor({ timeout: 15_000 });
  const history = conv.getByRole("log", { name: "Conversation history" });
  await history.getByText(meanwhile).waitFor({ timeout: 15_000 });
  await ana.page.waitForTimeout(500);
  for (const line of [first, snippet, meanwhile]) {
    const shown = await history.getByText(line).count();
    if (shown !== 1) throw new Error(`"${line}" is shown ${shown} times after the reconnect`);
  }
  if (runs("note")) await history.getByText(privateNote).waitFor();
  step("network dropped and came back: María's message from meanwhile is shown once, nothing else doubled");

  const ben = await staff("ben");
  await available(ben.page);
  step("Ben logged in and available");

  // ---- The supervisor's floor and silent monitoring.
  let benConv = null;
  const sam = runs("floor") ? await staff("sam") : null;
  const floor = sam && sam.page.getByRole("region", { name: "Supervisor — the floor" });
  if (runs("floor")) {
    const onShift = floor.getByRole("table", { name: "On shift" });
    await onShift.getByRole("row").filter({ hasText: "Ana García" }).filter({ hasText: "1 of 3" }).waitFor({ timeout: 15_000 });
    await onShift.getByRole("row").filter({ hasText: "Ben Okafor" }).filter({ hasText: "Available" }).waitFor({ timeout: 15_000 });
    const inProgress = floor.getByRole("list", { name: "Conversations in progress" }).getByRole("listitem")
      .filter({ hasText: "with Ana García" });
    await inProgress.waitFor({ timeout: 15_000 });
    step("Sam sees Ana and Ben on shift with their load, and Ana's conversation in progress");
    await axe(sam.page, "supervisor floor");
    await shot(sam.page, "dashboard-supervisor.png");
  }
  if (runs("floor") && runs("monitor")) {
    const inProgress = floor.getByRole("list", { name: "Conversations in progress" }).getByRole("listitem")
      .filter({ hasText: "with Ana García" });
    await inProgress.getByRole("button", { name: /^Monitor / }).click();
    const watch = floor.getByRole("region", { name: /^Monitoring / });
    await watch.getByText(first).waitFor({ timeout: 10_000 });
    if (runs("note")) await watch.getByText(privateNote).waitFor();
    if (await watch.getByRole("textbox").count()) throw new Error("the monitoring view has a text box");
    const later = "sorry my phone died. are you still there";
    await text(maria, EASTSIDE, later);
    await watch.getByText(later).waitFor({ timeout: 10_000 });
    await conv.getByText(later).waitFor({ timeout: 10_000 });
    step("Sam monitors silently: history, the private note, a new line; no reply box");
    await axe(sam.page, "supervisor floor and monitoring");
    await shot(sam.page, "dashboard-supervisor.png");
    await watch.getByRole("button", { name: "Stop monitoring" }).click();
    await watch.waitFor({ state: "detached" });
    step("Sam stopped monitoring");
  }

  // ---- Warm transfer to Ben, keyboard only.
  if (runs("transfer")) {
    await replyBox.focus();
    await focusReaches(ana.page, "transfer");
    await ana.page.keyboard.press("Enter");
    const dialog = ana.page.getByRole("dialog", { name: "Transfer the conversation" });
    await dialog.waitFor();
    if ((await focusedTestId(ana.page)) !== "transfer-target") throw new Error("the dialog did not focus the target");
    const target = dialog.getByLabel("Transfer to");
    for (let i = 0; i < 10 && (await target.inputValue()) !== "counsellor:ben"; i++) await ana.page.keyboard.press("ArrowDown");
    if ((await target.inputValue()) !== "counsellor:ben") throw new Error("could not choose Ben with the arrows");
    await ana.page.keyboard.press("Tab");
    if ((await focusedTestId(ana.page)) !== "transfer-warm") throw new Error("Tab did not reach the warm/cold choice");
    if (!(await dialog.getByRole("radio", { name: /^Warm/ }).isChecked())) throw new Error("warm is not the default");
    await ana.page.keyboard.press("Tab");
    const handover = "She is safe tonight; prefers Spanish; sister Lucía can be involved.";
    await ana.page.keyboard.type(handover);
    await focusReaches(ana.page, "transfer-confirm");
    await axe(ana.page, "transfer dialog");
    await shot(ana.page, "dashboard-transfer.png", false);
    await ana.page.keyboard.press("Enter");
    await conv.getByRole("status").filter({ hasText: "Waiting for Ben Okafor to accept…" }).waitFor({ timeout: 10_000 });
    await conv.getByRole("button", { name: "Cancel transfer" }).waitFor();
    if ((await focusedTestId(ana.page)) !== "reply-input") throw new Error("after the transfer the keyboard is not back in the reply box");
    step("warm transfer to Ben sent, keyboard only; Ana sees it waiting for Ben");

    const transferOffer = ben.page.getByRole("article", { name: /^Transfer from Ana García \(warm\)/ });
    await transferOffer.waitFor({ timeout: 10_000 });
    await transferOffer.getByText(handover).waitFor();
    step("Ben's offer: Transfer from Ana García (warm), with the handover note");
    await axe(ben.page, "transfer offer");
    await ben.page.screenshot({ path: join(SHOTS, "dashboard-transfer-offer.png"), fullPage: true });
    await transferOffer.getByRole("button", { name: "Accept" }).click();
    benConv = ben.page.getByRole("tabpanel").filter({ hasText: first });
    await benConv.waitFor({ timeout: 10_000 });
    await conv.waitFor({ state: "detached", timeout: 10_000 });
    await ana.page.getByTestId("announce-polite").filter({ hasText: /now with Ben/ }).waitFor({ timeout: 5_000 });
    step("Ben accepted: the conversation and its history are his; Ana's tab closed with a polite announcement");
  }

  // ---- The supervisor gives Ben's conversation back to Ana.
  if (benConv && runs("floor") && runs("reassign")) {
    const item = floor.getByRole("list", { name: "Conversations in progress" }).getByRole("listitem")
      .filter({ hasText: "with Ben Okafor" });
    await item.waitFor({ timeout: 15_000 });
    await item.getByRole("combobox", { name: /^Reassign / }).selectOption({ label: "Ana García" });
    await item.getByRole("button", { name: "Reassign" }).click();
    await benConv.waitFor({ state: "detached", timeout: 10_000 });
    await ben.page.getByTestId("announce-polite").filter({ hasText: /now with Ana/ }).waitFor({ timeout: 5_000 });
    // A reassignment is a cold transfer from the supervisor to Ana alone.
    const given = ana.page.getByRole("article", { name: /^Transfer from Sam Whitfield \(cold\)/ }).filter({ hasText: first });
    await given.waitFor({ timeout: 10_000 });
    await given.getByRole("button", { name: "Accept" }).click();
    await conv.getByText(meanwhile).waitFor({ timeout: 10_000 });
    benConv = null;
    step("Sam reassigned the conversation to Ana: Ben's tab closed; Ana accepted it, with its history");
  }

  // ---- The switchboard: hold, then release.
  let released = null;
  if (runs("floor") && runs("switchboard")) {
    await floor.getByRole("button", { name: "Hold every waiting contact for supervisors" }).click();
    await floor.getByRole("status").filter({ hasText: /^Switchboard on/ }).waitFor({ timeout: 10_000 });
    await floor.getByRole("button", { name: "Release them" }).waitFor();
    step("Sam turned the switchboard on");
    const james = await phoneOf(JAMES);
    const surge = "its a really bad night, can someone talk";
    await text(james, LINE, surge);
    const queued = sam.page.getByRole("list", { name: "Waiting contacts, most urgent first" }).getByRole("listitem")
      .filter({ hasText: "Held for supervisors" }).filter({ hasText: "··43" });
    await queued.waitFor({ timeout: 15_000 });
    await ben.page.getByRole("list", { name: "Waiting contacts, most urgent first" }).getByRole("listitem")
      .filter({ hasText: "Held for supervisors" }).first().waitFor({ timeout: 10_000 });
    if (await ana.page.getByRole("article").filter({ hasText: surge }).count()) throw new Error("a held contact was offered to a counsellor");
    step("a new text is held: shown held in the queue, offered to no counsellor");
    await axe(sam.page, "switchboard on, a contact held");
    await shot(sam.page, "dashboard-switchboard.png");
    await floor.getByRole("button", { name: "Release them" }).click();
    await floor.getByRole("status").filter({ hasText: /^Switchboard off/ }).waitFor({ timeout: 10_000 });
    const offered = ana.page.getByRole("article", { name: /^New contact/ }).filter({ hasText: surge });
    await offered.waitFor({ timeout: 15_000 });
    step("released: the contact is offered to the floor again");
    await offered.getByRole("button", { name: "Accept" }).click();
    released = surge;
    if (runs("profile")) {
      // James's partner has no consent on file: the control says why not.
      const profile = ana.page.getByRole("tabpanel").filter({ hasText: surge }).getByRole("region", { name: "The person" });
      const involve = profile.getByRole("button", { name: "Involve Taylor Reed" });
      await involve.waitFor({ timeout: 10_000 });
      if (!(await involve.isDisabled())) throw new Error("Involve is enabled without a consent");
      const why = await profile.getByTestId("trusted-contact").filter({ hasText: "Taylor Reed" }).textContent();
      if (!/cannot involve: /.test(why)) throw new Error(`no reason shown: ${why}`);
      step(`James's trusted contact cannot be involved, and the profile says why: "${why.split("cannot involve: ")[1].replace(/\.?\s*Involve.*$/, "")}"`);
    }
  }

  // ---- A person leaves with the quick exit before anyone answers: they
  // are in the follow-up list with the warning; "I'm reaching out" claims it.
  let claimed = null;
  if (runs("follow-up")) {
    const chatCtx = await browser.newContext({ viewport: { width: 390, height: 780 } });
    const chat = await chatCtx.newPage();
    await chat.goto(`${CHAT}/`);
    const gone = "someone might see this, I have to go";
    await chat.locator("#text").fill(gone);
    await chat.locator("#send").click();
    await chat.locator("#log li.me", { hasText: gone }).getByText("Sent ✓").waitFor({ timeout: 10_000 });
    // Offered to whoever the router gives it to first (the most urgent go first).
    const offers = [ana.page, ben.page].map((p) => p.getByRole("article", { name: /^New contact/ }).filter({ hasText: gone }));
    await Promise.any(offers.map((o) => o.waitFor({ timeout: 15_000 })));
    await chat.keyboard.press("Escape");
    await chat.waitForURL((u) => !u.toString().startsWith(`${CHAT}/`) || u.pathname === "/healthz", { timeout: 10_000 });
    await chatCtx.close();
    const followUps = ana.page.getByRole("region", { name: /^Follow-ups/ });
    const entry = followUps.getByRole("listitem").filter({ hasText: "Chat" }).first();
    await entry.waitFor({ timeout: 15_000 });
    await entry.getByText(/Answer in the chat only/).waitFor();
    for (const o of offers) await o.waitFor({ state: "detached", timeout: 10_000 });
    step("the person left with the quick exit: offer gone, in the follow-ups with the chat-only warning");
    await axe(ana.page, "follow-ups");
    await entry.getByRole("button", { name: "I'm reaching out" }).click();
    const mine = ana.page.getByRole("tabpanel").filter({ hasText: gone });
    await mine.waitFor({ timeout: 10_000 });
    await mine.getByText(/Answer in the chat only/).waitFor();
    claimed = gone;
    step("Ana claimed it: the conversation is hers, with the warning to answer in the chat only");
  }

  // ---- Leave the line clean for the next spec.
  if (claimed) await resolve(ana.page, claimed);
  if (released) await resolve(ana.page, released);
  await resolve(benConv ? ben.page : ana.page, first);
  step("conversations resolved");
  if (sam) await sam.ctx.close();
  await ana.ctx.close();
  await ben.ctx.close();
  console.log("browser shift passed");
} catch (e) {
  failed = true;
  console.error("browser shift FAILED:", e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
