// No Wrong Door chat, for a partner's page:
//   <script src="https://CHAT-HOST/embed.js?partner=YOUR-ID" async></script>
// Adds a "Chat with us" button that opens the line's chat in a frame. The
// chat keeps nothing on this site; its quick exit replaces this page too.
(function () {
  'use strict';
  var origin = '__CHAT_ORIGIN__';
  var partner = '__PARTNER__';
  var script = document.currentScript;
  var lang = ((script && script.dataset.lang) || document.documentElement.lang || 'en').slice(0, 2) === 'es' ? 'es' : 'en';
  var frame = null;
  var button = document.createElement('button');
  button.type = 'button';
  button.textContent = lang === 'es' ? 'Chatea con nosotros' : 'Chat with us';
  button.setAttribute('aria-expanded', 'false');
  button.style.cssText = 'position:fixed;right:1rem;bottom:1rem;z-index:2147483647;padding:.7rem 1.1rem;' +
    'border-radius:2rem;border:0;background:#0b4f8a;color:#fff;font:600 16px system-ui,sans-serif;min-height:44px;cursor:pointer';
  button.addEventListener('click', function () {
    if (frame) {
      var open = frame.style.display !== 'none';
      frame.style.display = open ? 'none' : 'block';
      button.setAttribute('aria-expanded', String(!open));
      return;
    }
    frame = document.createElement('iframe');
    frame.title = lang === 'es' ? 'Chat de apoyo' : 'Support chat';
    frame.src = origin + '/?partner=' + encodeURIComponent(partner) + '&lang=' + lang;
    frame.referrerPolicy = 'no-referrer';
    frame.style.cssText = 'position:fixed;right:1rem;bottom:4.5rem;z-index:2147483647;width:min(24rem,calc(100vw - 2rem));' +
      'height:min(36rem,calc(100vh - 6rem));border:1px solid #888;border-radius:.6rem;background:#fff;box-shadow:0 4px 24px rgba(0,0,0,.25)';
    document.body.appendChild(frame);
    button.setAttribute('aria-expanded', 'true');
    frame.focus();
  });
  window.addEventListener('message', function (e) {
    if (e.origin !== origin || !e.data || e.data.type !== 'nwd-quick-exit') return;
    var to = String(e.data.to || 'https://www.google.com/');
    if (!/^https?:\/\//.test(to)) return;
    document.body.innerHTML = '';
    location.replace(to);
  });
  function add() { document.body.appendChild(button); }
  if (document.body) add(); else document.addEventListener('DOMContentLoaded', add);
})();
