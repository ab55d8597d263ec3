/**
 * Times of the admin pages in the reader's own time zone: every `<time datetime>` the server
 * wrote (in UTC, see the `when` filter of app/web/shell.py) is shown as a local date and time.
 * @module local-times
 */

const FORMAT = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

for (const element of document.querySelectorAll("time[datetime]")) {
  const moment = new Date(element.getAttribute("datetime"));
  if (!Number.isNaN(moment.getTime())) {
    element.title = element.textContent;
    element.textContent = FORMAT.format(moment);
  }
}
