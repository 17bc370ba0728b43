-- Every user to score: signed-up users and users with events before the cut-off.
with known as (
    select user_id from users where created_at is null or created_at < $cutoff
),

active as (
    select distinct user_id from events where ts < $cutoff
)

select user_id from known
union
select user_id from active
order by user_id
