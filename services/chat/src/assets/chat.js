// The patient chat page. What it keeps, and where (ADR 0016):
// - in memory: the token, the conversation on screen, the messages not yet
//   acknowledged by the server;
// - in sessionStorage (this tab only, so a reload resumes): the token, the
//   next sequence number and the unacknowledged messages (the offline queue).
//   Nothing in localStorage, cookies, IndexedDB or the URL; no notifications.
// Quick exit removes all of it, clears the screen and replaces the page
// (location.replace: Back does not return to it).
(function () {
  'use strict';
  var KEY = 'nwd-chat';
  var body = document.body;
  var cfg = {
    partner: body.dataset.partner || '',
    quickExit: body.dataset.quickExit || 'https://www.google.com/',
    emergency: body.dataset.emergency || '911',
    line: body.dataset.line || '',
  };
  var WORDS = {
    en: {
      title: 'Chat with ' + cfg.line, exit: 'Quick exit',
      exitHelp: 'Press Quick exit or the Esc key to leave this page at once. It clears this chat from the screen and the browser.',
      intro: 'You can write to a counsellor here. If you are in danger now, call ' + cfg.emergency + '.',
      safeQ: 'Are you safe right now? (optional)', yes: 'Yes', no: 'No', notSure: 'Not sure',
      conversation: 'Conversation', yourMessage: 'Your message', limit: 'Up to 4,000 characters.', send: 'Send',
      ended: 'This chat has ended on this device. The line is still here for you.', restart: 'Start a new chat',
      you: 'You', counsellor: 'Counsellor', lineName: cfg.line,
      typing: 'The counsellor is typing…',
      helpfulQ: 'Was this chat helpful?', thanks: 'Thank you for telling us.', seen: 'Seen ✓✓',
      sending: 'Sending…', sent: 'Sent ✓', notSent: 'Not sent yet — it will be sent when you are back online.',
      waiting: 'Your message is with the line and a counsellor will answer here. If you are in danger now, call ' + cfg.emergency + '.',
      waitingPeople: function (n) { return 'About ' + n + ' people are waiting.'; },
      waitedLess: 'Recently people waited less than a minute.',
      waitedAbout: function (m) { return 'Recently people waited about ' + m + (m === 1 ? ' minute.' : ' minutes.'); },
      connecting: 'Connecting…', offline: 'You are offline. Your messages will be sent when the connection is back.',
      connected: '', otherLang: 'Español', otherCode: 'es',
      notes: {
        joined: 'A counsellor has joined the chat.',
        closed: 'The counsellor has closed this conversation. If you write again, a counsellor will answer.',
      },
      refused: {
        too_long: 'This message is too long to send (at most 4,000 characters). Please split it into shorter messages.',
        too_fast: 'You are sending messages very quickly. Your message will be sent again in a moment.',
        too_many_sessions: 'Too many chats were started from this connection just now. Please wait a minute and try again.',
        expired: 'This chat has ended on this device. You can start a new chat now; the line is still here for you.',
        unknown_token: 'This chat has ended on this device. You can start a new chat now; the line is still here for you.',
        origin: 'This chat cannot open on this page.',
        bad_frame: 'Something went wrong with this page. Please reload it.',
        unavailable: 'Your message is not sent yet; it will be sent again automatically.',
      },
    },
    es: {
      title: 'Chatea con ' + cfg.line, exit: 'Salida rápida',
      exitHelp: 'Pulsa Salida rápida o la tecla Esc para salir de esta página al instante. Borra este chat de la pantalla y del navegador.',
      intro: 'Aquí puedes escribir a un consejero. Si estás en peligro ahora, llama al ' + cfg.emergency + '.',
      safeQ: '¿Estás a salvo ahora mismo? (opcional)', yes: 'Sí', no: 'No', notSure: 'No estoy seguro/a',
      conversation: 'Conversación', yourMessage: 'Tu mensaje', limit: 'Hasta 4.000 caracteres.', send: 'Enviar',
      ended: 'Este chat terminó en este dispositivo. La línea sigue aquí para ti.', restart: 'Empezar un chat nuevo',
      you: 'Tú', counsellor: 'Consejero/a', lineName: cfg.line,
      typing: 'El consejero está escribiendo…',
      helpfulQ: '¿Te ayudó este chat?', thanks: 'Gracias por contarnos.', seen: 'Visto ✓✓',
      sending: 'Enviando…', sent: 'Enviado ✓', notSent: 'Aún no enviado: se enviará cuando vuelvas a tener conexión.',
      waiting: 'Tu mensaje está con la línea y un consejero te responderá aquí. Si estás en peligro ahora, llama al ' + cfg.emergency + '.',
      waitingPeople: function (n) { return 'Hay unas ' + n + ' personas esperando.'; },
      waitedLess: 'Últimamente la espera fue de menos de un minuto.',
      waitedAbout: function (m) { return 'Últimamente la espera fue de unos ' + m + (m === 1 ? ' minuto.' : ' minutos.'); },
      connecting: 'Conectando…', offline: 'No tienes conexión. Tus mensajes se enviarán cuando vuelva.',
      connected: '', otherLang: 'English', otherCode: 'en',
      notes: {
        joined: 'Un consejero se ha unido al chat.',
        closed: 'El consejero cerró esta conversación. Si vuelves a escribir, un consejero te responderá.',
      },
      refused: {
        too_long: 'Este mensaje es demasiado largo (máximo 4.000 caracteres). Divídelo en mensajes más cortos.',
        too_fast: 'Estás enviando mensajes muy rápido. Tu mensaje se enviará de nuevo en un momento.',
        too_many_sessions: 'Se empezaron demasiados chats desde esta conexión. Espera un minuto e inténtalo de nuevo.',
        expired: 'Este chat terminó en este dispositivo. Puedes empezar uno nuevo; la línea sigue aquí para ti.',
        unknown_token: 'Este chat terminó en este dispositivo. Puedes empezar uno nuevo; la línea sigue aquí para ti.',
        origin: 'Este chat no puede abrirse en esta página.',
        bad_frame: 'Algo salió mal en esta página. Vuelve a cargarla.',
        unavailable: 'Tu mensaje aún no se envió; se enviará de nuevo automáticamente.',
      },
    },
  };
  var params = new URLSearchParams(location.search);
  var lang = params.get('lang') === 'es' ? 'es' : 'en';
  function t(k) { return WORDS[lang][k]; }

  var $ = function (id) { return document.getElementById(id); };
  var log = $('log'), status = $('status'), text = $('text');

  // ---- state
  var saved = {};
  try { saved = JSON.parse(sessionStorage.getItem(KEY) || '{}') || {}; } catch (e) { saved = {}; }
  var token = saved.token || null;
  var nextSeq = saved.nextSeq || 1;
  var pending = saved.pending || []; // [{seq, text, safe_now}]
  var lastSeen = 0;                  // ours shown on this page (0 after a reload: history again)
  var shownMine = {};                // seq -> li
  var typingTimer = null;
  var ws = null, retry = 0, retryTimer = null, exited = false, ended = false, waitingShown = false;
  var readUpto = 0;                  // the counsellor has read ours up to this seq
  var withCounsellor = false;        // a counsellor joined (until the chat is closed)
  var estimate = null;               // the last wait estimate shown

  function save() {
    if (exited) return;
    try {
      sessionStorage.setItem(KEY, JSON.stringify({ token: token, nextSeq: nextSeq, pending: pending }));
    } catch (e) { /* storage full or blocked: memory only */ }
  }

  function translate() {
    document.documentElement.lang = lang;
    document.querySelectorAll('[data-i18n]').forEach(function (el) {
      var w = t(el.dataset.i18n);
      if (typeof w === 'string') el.textContent = w;
    });
    document.title = t('title');
    var b = $('lang');
    b.textContent = t('otherLang');
    b.lang = t('otherCode');
  }

  function time(at) {
    try { return new Date(at).toLocaleTimeString(lang, { hour: '2-digit', minute: '2-digit' }); } catch (e) { return ''; }
  }

  // Stored messages (history, replies) carry the server's time and are put
  // in time order; a message just written goes last.
  var lastAt = 0;
  function item(cls, who, body, meta, at) {
    var li = document.createElement('li');
    li.className = cls;
    var when = at ? Date.parse(at) : NaN;
    if (isNaN(when)) when = Math.max(lastAt, Date.now());
    lastAt = Math.max(lastAt, when);
    li.dataset.at = String(when);
    var w = document.createElement('span');
    w.className = 'visually-hidden';
    w.textContent = who + ': ';
    li.appendChild(w);
    li.appendChild(document.createTextNode(body));
    var m = document.createElement('span');
    m.className = 'meta';
    m.textContent = meta || '';
    li.appendChild(m);
    var after = null;
    for (var el = log.lastElementChild; el; el = el.previousElementSibling) {
      if (Number(el.dataset.at) <= when) break;
      after = el;
    }
    log.insertBefore(li, after);
    li.scrollIntoView({ block: 'end' });
    return li;
  }

  function mark(seq, words, problem) {
    var li = shownMine[seq];
    if (!li) return;
    li.querySelector('.meta').textContent = words;
    li.classList.toggle('problem', !!problem);
  }

  function showMine(seq, body, meta, at) {
    if (shownMine[seq]) return;
    shownMine[seq] = item('me', t('you'), body, meta, at);
  }

  function frame(f) {
    if (ws && ws.readyState === 1) ws.send(JSON.stringify(f));
  }

  function sendPending(p) {
    if (p.helpful !== undefined) {
      frame({ type: 'feedback', seq: p.seq, helpful: p.helpful });
      return;
    }
    var f = { type: 'message', seq: p.seq, text: p.text };
    if (p.safe_now) f.safe_now = p.safe_now;
    frame(f);
  }

  // The counsellor read the person's messages up to `upto` (the server's
  // read mark, only ever raised): exactly those are marked seen.
  function seenUpto(upto) {
    if (upto > readUpto) readUpto = upto;
    Object.keys(shownMine).forEach(function (seq) {
      if (Number(seq) > readUpto) return;
      var meta = shownMine[seq].querySelector('.meta');
      if (meta.textContent === t('sent') || meta.textContent === WORDS[other()].sent) meta.textContent = t('seen');
    });
  }
  function other() { return lang === 'es' ? 'en' : 'es'; }

  // An honest wait estimate: what is known, in plain words; never
  // "nobody is available"; always how to get help now.
  function estimateWords(f) {
    var w = WORDS[lang], parts = [];
    if (f.waiting && f.waiting > 1) parts.push(w.waitingPeople(f.waiting));
    if (f.typical_wait_secs !== null && f.typical_wait_secs !== undefined) {
      parts.push(f.typical_wait_secs < 60 ? w.waitedLess : w.waitedAbout(Math.max(1, Math.round(f.typical_wait_secs / 60))));
    }
    parts.push(w.waiting);
    return parts.join(' ');
  }
  function showEstimate(f) {
    estimate = f;
    status.textContent = estimateWords(f);
  }

  // ---- the socket
  function connect() {
    if (exited || ended) return;
    clearTimeout(retryTimer);
    status.textContent = t('connecting');
    var url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws' +
      (cfg.partner ? '?partner=' + encodeURIComponent(cfg.partner) : '');
    ws = new WebSocket(url);
    ws.onopen = function () {
      retry = 0;
      ws.send(JSON.stringify({ type: 'hello', token: token, last_seen: lastSeen }));
    };
    ws.onmessage = function (e) {
      var f;
      try { f = JSON.parse(e.data); } catch (x) { return; }
      onFrame(f);
    };
    ws.onclose = function () {
      ws = null;
      if (exited || ended) return;
      status.textContent = navigator.onLine === false ? t('offline') : t('connecting');
      retry = Math.min(retry + 1, 6);
      retryTimer = setTimeout(connect, Math.min(500 * Math.pow(2, retry), 10000));
    };
  }

  function onFrame(f) {
    switch (f.type) {
      case 'session':
        token = f.token;
        save();
        break;
      case 'welcome':
        status.textContent = t('connected');
        (f.mine || []).forEach(function (m) { showMine(m.seq, m.text, t('sent'), m.at); });
        var stored = {};
        (f.stored || []).forEach(function (n) { stored[n] = true; });
        pending = pending.filter(function (p) {
          if (stored[p.seq]) { mark(p.seq, t('sent')); return false; }
          return true;
        });
        seenUpto(f.read_upto || 0);
        if (nextSeq <= f.stored_seq) nextSeq = f.stored_seq + 1;
        save();
        pending.forEach(function (p) {
          if (p.helpful === undefined) showMine(p.seq, p.text, t('sending'));
          sendPending(p);
        });
        if (f.stored_seq > 0) $('prechat').hidden = true;
        break;
      case 'ack':
        pending = pending.filter(function (p) { return p.seq !== f.seq; });
        save();
        mark(f.seq, f.seq <= readUpto ? t('seen') : t('sent'));
        if (!waitingShown && !withCounsellor && shownMine[f.seq]) {
          waitingShown = true;
          if (estimate) showEstimate(estimate); else status.textContent = t('waiting');
        }
        break;
      case 'seen':
        seenUpto(f.upto);
        break;
      case 'wait_estimate':
        if (!withCounsellor) showEstimate(f);
        break;
      case 'message':
        if (f.seq <= lastSeen) return; // never twice
        lastSeen = f.seq;
        var words = f.note ? (WORDS[lang].notes[f.note] || f.text) : f.text;
        item(f.from === 'counsellor' ? 'counsellor' : 'line',
          f.from === 'counsellor' ? t('counsellor') : t('lineName'), words, time(f.at), f.at);
        if (f.from === 'counsellor' || f.note === 'joined') {
          withCounsellor = true;
          estimate = null;
          status.textContent = '';
        }
        if (f.note === 'closed') {
          withCounsellor = false;
          waitingShown = false;
          $('feedback').hidden = false;
        }
        frame({ type: 'ack', seq: f.seq });
        break;
      case 'typing':
        status.textContent = t('typing');
        clearTimeout(typingTimer);
        typingTimer = setTimeout(function () {
          if (status.textContent === t('typing')) status.textContent = '';
        }, 5000);
        break;
      case 'refused':
        onRefused(f);
        break;
    }
  }

  function onRefused(f) {
    var words = WORDS[lang].refused[f.reason] || f.text;
    if (f.reason === 'expired' || f.reason === 'unknown_token') {
      forget();
      ended = true;
      $('composer').hidden = true;
      $('ended').hidden = false;
      status.textContent = words;
      return;
    }
    if (f.seq) {
      if (f.reason === 'too_long' || f.reason === 'bad_frame') {
        pending = pending.filter(function (p) { return p.seq !== f.seq; });
        save();
        mark(f.seq, words, true);
      } else {
        mark(f.seq, words, true);
        var p = pending.find(function (x) { return x.seq === f.seq; });
        if (p) setTimeout(function () { sendPending(p); }, 5000);
      }
      return;
    }
    status.textContent = words;
  }

  function forget() {
    token = null;
    pending = [];
    nextSeq = 1;
    try { sessionStorage.removeItem(KEY); } catch (e) { /* nothing stored */ }
  }

  // ---- sending
  $('composer').addEventListener('submit', function (e) {
    e.preventDefault();
    var body = text.value;
    if (!body.trim()) return;
    var p = { seq: nextSeq++, text: body };
    var safe = document.querySelector('input[name=safe]:checked');
    if (p.seq === 1 && safe) p.safe_now = safe.value;
    $('prechat').hidden = true;
    pending.push(p);
    save();
    showMine(p.seq, p.text, ws && ws.readyState === 1 && navigator.onLine !== false ? t('sending') : t('notSent'));
    sendPending(p);
    text.value = '';
    text.focus();
  });
  text.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('composer').requestSubmit(); }
  });

  // ---- quick exit
  function quickExit() {
    if (exited) return;
    if (ws && ws.readyState === 1) {
      try { ws.send(JSON.stringify({ type: 'quick_exit', seq: nextSeq })); } catch (e) { /* leaving anyway */ }
    }
    exited = true;
    forget();
    document.title = '';
    body.innerHTML = '';
    var to = cfg.quickExit;
    // An embedding page (embed.js) replaces itself too; nothing about the chat is sent.
    try { if (window.parent !== window) window.parent.postMessage({ type: 'nwd-quick-exit', to: to }, '*'); } catch (e) { /* not framed */ }
    try { window.top.location.replace(to); } catch (e) { location.replace(to); }
    location.replace(to);
  }
  $('quick-exit').addEventListener('click', quickExit);
  document.addEventListener('keydown', function (e) { if (e.key === 'Escape') quickExit(); });

  $('restart').addEventListener('click', function () {
    ended = false;
    lastSeen = 0;
    shownMine = {};
    log.innerHTML = '';
    $('ended').hidden = true;
    $('composer').hidden = false;
    $('prechat').hidden = false;
    waitingShown = false;
    readUpto = 0;
    withCounsellor = false;
    estimate = null;
    connect();
  });
  function answer(helpful) {
    var p = { seq: nextSeq++, helpful: helpful };
    pending.push(p);
    save();
    sendPending(p);
    $('feedback').hidden = true;
    status.textContent = t('thanks');
  }
  $('helpful-yes').addEventListener('click', function () { answer(true); });
  $('helpful-no').addEventListener('click', function () { answer(false); });
  $('lang').addEventListener('click', function () {
    var showing = estimate && status.textContent === estimateWords(estimate);
    lang = lang === 'es' ? 'en' : 'es';
    translate();
    if (showing) showEstimate(estimate);
  });
  // The browser knows the network is gone before the socket does: close it,
  // keep what is written in the queue, and reconnect as soon as it is back.
  // (Unacked messages stay queued and are resent after the next welcome.)
  function drop() {
    if (!ws) return;
    var old = ws;
    ws = null;
    old.onopen = old.onmessage = old.onclose = null;
    try { old.close(); } catch (e) { /* already closed */ }
  }
  window.addEventListener('online', function () {
    if (exited || ended) return;
    retry = 0;
    drop();
    connect();
  });
  window.addEventListener('offline', function () {
    clearTimeout(retryTimer);
    drop();
    status.textContent = t('offline');
  });

  translate();
  connect();
})();
