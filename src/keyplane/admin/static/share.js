// The share page: fetch the ciphertext once, decrypt it here with the key from the link's
// fragment (never sent to the server). Format: keyplane/core/sealed.py.
"use strict";
(function () {
  const box = document.getElementById("share");
  if (!box) { return; }
  const button = document.getElementById("reveal");
  const problem = document.getElementById("problem");

  function fail(text) {
    problem.textContent = text;
    problem.hidden = false;
  }

  function unb64url(text) {
    if (!/^[A-Za-z0-9_-]*$/.test(text)) { throw new Error("not base64url"); }
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out;
  }

  button.addEventListener("click", async function () {
    problem.hidden = true;
    if (!window.crypto || !window.crypto.subtle) {
      fail("This page needs a secure (HTTPS) connection to decrypt the secret. Nothing was revealed.");
      return;
    }
    let keyBytes = null;
    try { keyBytes = unb64url(location.hash.slice(1)); } catch (e) { keyBytes = null; }
    if (!keyBytes || keyBytes.length !== 32) {
      fail("This link is incomplete: the part after # is missing or damaged. Nothing was revealed; ask the sender for the full link.");
      return;
    }
    button.disabled = true;
    let response;
    try {
      response = await fetch(box.dataset.reveal, {
        method: "POST", headers: {"Content-Type": "application/json"}, body: "{}",
        cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
      });
    } catch (e) {
      button.disabled = false;
      fail("Could not reach the server. Nothing was revealed; try again.");
      return;
    }
    const data = await response.json().catch(function () { return {}; });
    if (!response.ok) {
      box.hidden = true;
      fail((data.error && data.error.message) || "This link cannot be opened.");
      return;
    }
    try {
      const raw = unb64url(data.ciphertext);
      const key = await crypto.subtle.importKey("raw", keyBytes, {name: "AES-GCM"}, false,
                                                ["decrypt"]);
      const plain = await crypto.subtle.decrypt({name: "AES-GCM", iv: raw.slice(0, 12)}, key,
                                                raw.slice(12));
      document.getElementById("secret").value = new TextDecoder().decode(plain);
      box.hidden = true;
      document.getElementById("revealed").hidden = false;
      history.replaceState(null, "", location.pathname);  // the key leaves the address bar
    } catch (e) {
      box.hidden = true;
      fail("The secret could not be decrypted: the link is damaged. It is now used up; ask the sender for a new one.");
    }
  });

  document.getElementById("copy").addEventListener("click", async function () {
    const field = document.getElementById("secret");
    const said = document.getElementById("copied");
    try {
      await navigator.clipboard.writeText(field.value);
      said.textContent = "Copied.";
    } catch (e) {
      field.select();
      said.textContent = document.execCommand("copy") ? "Copied." : "Select the text and copy it.";
    }
  });
})();
