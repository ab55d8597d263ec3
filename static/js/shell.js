/**
 * The capture app's app bar, filled in client-side because the page is cached for everyone:
 * the user's name, the Log out button and the links of the user's role (the server renders
 * every link hidden, each with the roles that see it; an admin sees them all).
 * @module shell
 */

import { byId } from "./ui.js";

/**
 * Show who is logged in, or nobody.
 * @param {{user: string, role: string}|null} me the logged-in user, or null
 */
export function showUser(me) {
  byId("who").textContent = me ? me.user : "";
  byId("logout").hidden = !me;
  for (const item of document.querySelectorAll(".appnav [data-roles]")) {
    item.hidden = !me || !(me.role === "admin" || item.dataset.roles.split(" ").includes(me.role));
  }
}
